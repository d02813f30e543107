"""X-Ray traces through Powertools' Tracer: a subsegment for each stage of a generation.

Only on Lambda (with `Tracing: Active`) is there a trace to add to: elsewhere no Tracer is built,
since building one imports the X-Ray SDK (most of a second), and `span` does nothing. On Lambda
Powertools still leaves tracing off where POWERTOOLS_TRACE_DISABLED is set, or under SAM local.
"""

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from handler.observability import SERVICE

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


class Stage:
    """The subsegments of a generation, by name."""

    MODEL_LOAD = "model load"
    DECODE = "decode"
    ENCODEC = "EnCodec"
    ENCODE = "encode"
    STORE = "store"


@functools.cache
def tracer() -> "Tracer | None":
    """The process's Tracer on Lambda (S3 and Lambda calls traced too, through botocore); None elsewhere."""
    if not os.environ.get("LAMBDA_TASK_ROOT"):
        return None
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE, patch_modules=["botocore"])


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the enclosed work as the subsegment `name` of the current trace, where there is one.

    On a thread other than the invocation's (the engine thread), the X-Ray SDK hangs the
    subsegment under the function's segment, from the trace header Lambda sets for the invocation.
    """
    active = tracer()
    if active is None or active.disabled:
        yield
        return
    with active.provider.in_subsegment(name):
        yield


def traced_lambda_handler(handler: _Handler) -> _Handler:
    """`handler` traced as Powertools does (a `## handler` subsegment, cold start annotated) on
    Lambda; itself elsewhere. Responses are not recorded: they carry prompts."""
    active = tracer()
    if active is None:
        return handler
    traced: _Handler = active.capture_lambda_handler(handler, capture_response=False)  # type: ignore[assignment]
    return traced
