"""Structured JSON logs, one line per event, carrying the Lambda request id."""

import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from handler.errors import error_response

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_cold_start = True
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, with any `extra` fields merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (current := request_id.get()) is not None:
            entry["request_id"] = current
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time of each record, not at set-up."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """Send the app's logs to stdout as JSON lines (CloudWatch reads them as structured)."""
    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("handler")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def take_cold_start() -> bool:
    """True for the first request this process serves, False afterwards."""
    global _cold_start
    cold, _cold_start = _cold_start, False
    return cold


async def log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: tag the request with its Lambda request id (or a fresh one) and log its outcome."""
    context = request.scope.get("aws.context")
    current = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    token = request_id.set(current)
    started = time.perf_counter()
    cold_start = take_cold_start()
    try:
        response = await call_next(request)
    except Exception:
        # Answered here, not by the outer error middleware, so it is logged and tagged like the rest.
        logging.getLogger("handler.errors").exception("unhandled error", extra={"path": request.url.path})
        response = error_response(500, "Internal server error")
    finally:
        request_id.reset(token)
    logging.getLogger("handler.access").info(
        "request",
        extra={
            "request_id": current,
            "method": request.method,
            "path": request.url.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "cold_start": cold_start,
        },
    )
    response.headers["x-request-id"] = current
    return response
