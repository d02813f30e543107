"""JSON log lines through Powertools' Logger, one per event, tagged with the request or job they serve."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger

from handler.observability import SERVICE
from handler.observability.metrics import record_cold_start

APP_LOGGER = "handler"
"""The stdlib logger every module's `logging.getLogger(__name__)` descends from."""

_cold_start = True


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time of each record, not at set-up (so pytest's
    capture, and anything else that swaps stdout, sees the lines)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class _LoggerName(logging.Filter):
    """Names the module that wrote each line as `logger` (Powertools' formatter has no such key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.logger = record.name
        return True


service_logger = Logger(
    service=SERVICE,
    logger_handler=StdoutHandler(),
    log_record_order=["timestamp", "level", "logger", "message"],
    utc=True,
    use_rfc3339=True,
    # The formatted traceback (`exception`) is enough; a second, structured copy doubles each error line.
    serialize_stacktrace=False,
    # `logger` names the module; a function and line number on every line is noise in CloudWatch.
    location=None,
)
"""Powertools' Logger: its handler and formatter write every line of the app's loggers."""


def configure_logging(level: str | None = None) -> None:
    """Send the app's logs to stdout as JSON lines (CloudWatch reads them as structured): every
    `handler.*` logger through Powertools' formatter. `level` defaults to Powertools' own choice
    (POWERTOOLS_LOG_LEVEL, Lambda's AWS_LAMBDA_LOG_LEVEL, else INFO)."""
    if level is not None:
        service_logger.setLevel(level)
    output = service_logger.registered_handler
    if not any(isinstance(known, _LoggerName) for known in output.filters):
        output.addFilter(_LoggerName())
    app_logger = logging.getLogger(APP_LOGGER)
    app_logger.handlers[:] = [output]
    app_logger.setLevel(service_logger.log_level)
    app_logger.propagate = False


@contextmanager
def log_context(**keys: str) -> Iterator[None]:
    """Add `keys` to every log line written in this context: this request or job, and the threads
    it hands work to with a copy of its context (`run_in_threadpool`, the engine thread)."""
    service_logger.thread_safe_append_keys(**keys)
    try:
        yield
    finally:
        service_logger.thread_safe_remove_keys(keys)


def current_log_keys() -> dict[str, Any]:
    """The keys `log_context` has added in this context."""
    return dict(service_logger.thread_safe_get_current_keys())


def take_cold_start() -> bool:
    """True for the first request or job this process serves (counted as a cold start), False afterwards."""
    global _cold_start
    cold, _cold_start = _cold_start, False
    if cold:
        record_cold_start()
    return cold
