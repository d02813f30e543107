"""The HTTP middleware that logs each request's outcome and counts its 4xx and 5xx responses."""

import logging
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from handler.errors import error_response
from handler.middleware import HttpMiddleware
from handler.observability.logs import log_context, take_cold_start
from handler.observability.metrics import record_response

READ_METHODS = frozenset({"GET", "HEAD"})
UNROUTED = "unrouted"
"""The `route` of a request no route answered: an unknown path, a method its path does not take, or
one refused before routing (an API key missing or wrong, a body too large)."""


def route_of(scope: Scope) -> str:
    """The route that answered the request, as `METHOD /path/{template}`: bounded, whatever the
    client sends. Read once the app has answered, from what routing left in the request's scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    method = scope["method"]
    # A method the route does not take is the client's to choose: it would add a metric per word.
    # A mount (the studio's static files) takes reads only.
    if path is None or method not in (getattr(route, "methods", None) or READ_METHODS):
        return UNROUTED
    return f"{method} {path}"


class ObservedRequests(HttpMiddleware):
    """Tags each request's log lines with its Lambda request id (or a fresh one), answers an
    unhandled error with a 500, then logs the outcome and counts it by route."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = scope.get("aws.context")
        request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
        started = time.perf_counter()
        cold_start = take_cold_start()
        status: int | None = None

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_tagged)
            except Exception:
                # Answered here, not by the outer error middleware, so it is logged and tagged like the rest.
                logging.getLogger("handler.errors").exception("unhandled error", extra={"path": scope["path"]})
                if status is not None:
                    raise  # the response has begun: the server can only drop the connection
                await error_response(500, "Internal server error")(scope, receive, send_tagged)
            logging.getLogger("handler.access").info("request", extra=access_fields(scope, status, started, cold_start))
        record_response(route_of(scope), status or 500)


def access_fields(scope: Scope, status: int | None, started: float, cold_start: bool) -> dict[str, Any]:
    """The access log line's fields."""
    return {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "cold_start": cold_start,
    }
