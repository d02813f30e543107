"""An API that needs a key, as the security issue plans one: the studio's key handling is tested against it."""

import json
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = ("/studio",)
"""The page and its files load without a key; `GET /` is open too."""


@dataclass
class RequireBearerKey:
    """ASGI middleware: every HTTP request but `GET /` and the studio's files needs `Authorization: Bearer <key>`,
    else 401 with `WWW-Authenticate: Bearer` and a JSON `detail`. Records each authorization it was sent."""

    app: ASGIApp
    key: str
    seen: list[str | None] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        sent = headers.get(b"authorization", b"").decode() or None
        self.seen.append(sent)
        if sent == f"Bearer {self.key}":
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "Missing or invalid API key"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
