"""The shape of the app's own ASGI middleware."""

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Plain ASGI middleware for HTTP requests; anything else (the lifespan) passes straight through.

    Plain ASGI rather than Starlette's `BaseHTTPMiddleware`, whose extra task and streams per
    request cost more than everything else a health check does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request through `self.app`."""
        raise NotImplementedError
