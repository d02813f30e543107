"""API-key authentication of every request but the health check, the docs and the page's files."""

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from handler.errors import error_response
from handler.security.keys import KeyRing

PUBLIC_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/studio",)
"""The web page's static files: the page itself asks for the key and sends it with its API calls."""


def is_public(method: str, path: str) -> bool:
    """Whether a request may be answered without a key: reading the health check, docs or page."""
    if method not in ("GET", "HEAD"):
        return False
    return path in PUBLIC_PATHS or any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES)


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


class ApiKeyAuth:
    """Answers `401` with `WWW-Authenticate: Bearer` to a request without an accepted key."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or is_public(scope["method"], scope["path"])
            or self.keys.accepts(presented_key(Headers(scope=scope)))
        ):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Missing or invalid API key: send `Authorization: Bearer <key>`")
        response.headers["WWW-Authenticate"] = 'Bearer realm="S.Rocks.Music API"'
        await response(scope, receive, send)
