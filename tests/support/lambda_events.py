"""What the Lambda runtime hands a handler: sample API Gateway events and a context object."""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.infra_files import ROOT

EVENTS_DIR = ROOT / "infra" / "events"
"""The sample events `sam local invoke -e` takes."""


@dataclass
class LambdaContext:
    """The attributes of the context object the Lambda runtime passes to a handler."""

    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "MusicFunction"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 10240
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:MusicFunction"
    log_group_name: str = "/aws/lambda/MusicFunction"
    log_stream_name: str = "2026/11/24/[$LATEST]0123456789abcdef"
    remaining_ms: int = 900_000
    """Time left in the invocation: by default a full 15-minute budget."""

    def get_remaining_time_in_millis(self) -> int:
        """Time left in the invocation."""
        return self.remaining_ms


def load_event(name: str) -> dict[str, Any]:
    """A sample API Gateway event from infra/events/, as `sam local invoke -e` uses it."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    return event
