"""Security headers on every response."""

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from handler.middleware import HttpMiddleware

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders(HttpMiddleware):
    """Adds `SECURITY_HEADERS` to every response, and `Cache-Control: no-store` to JSON ones (job
    status, listings and errors change from one request to the next and may be private); a header
    a route has set is kept."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
