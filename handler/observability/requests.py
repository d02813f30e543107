"""The HTTP middleware that logs each request's outcome and counts its 4xx and 5xx responses."""

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from handler.errors import error_response
from handler.observability.logs import log_context, take_cold_start
from handler.observability.metrics import record_response

READ_METHODS = frozenset({"GET", "HEAD"})
UNROUTED = "unrouted"
"""The `route` of a request no route answered: an unknown path, a method its path does not take, or
one refused before routing (an API key missing or wrong, a body too large)."""


def route_of(request: Request) -> str:
    """The route that answered `request`, as `METHOD /path/{template}`: bounded, whatever the client
    sends. Read once the app has answered, from what routing left in the request's scope."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    # A method the route does not take is the client's to choose: it would add a metric per word.
    # A mount (the studio's static files) takes reads only.
    if path is None or request.method not in (getattr(route, "methods", None) or READ_METHODS):
        return UNROUTED
    return f"{request.method} {path}"


async def observe_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: tag the request's log lines with its Lambda request id (or a fresh one), then
    log its outcome and count it by route."""
    context = request.scope.get("aws.context")
    request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    started = time.perf_counter()
    cold_start = take_cold_start()
    with log_context(request_id=request_id):
        try:
            response = await call_next(request)
        except Exception:
            # Answered here, not by the outer error middleware, so it is logged and tagged like the rest.
            logging.getLogger("handler.errors").exception("unhandled error", extra={"path": request.url.path})
            response = error_response(500, "Internal server error")
        logging.getLogger("handler.access").info(
            "request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "cold_start": cold_start,
            },
        )
    record_response(route_of(request), response.status_code)
    response.headers["x-request-id"] = request_id
    return response
