"""Log lines: JSON through Powertools' Logger, tagged with the request, invocation and job they serve."""

import json
import logging
from collections.abc import Callable
from typing import Any
from unittest.mock import ANY

import pytest
from botocore.stub import Stubber

from handler.observability import SERVICE
from handler.observability.logs import configure_logging, current_log_keys, log_context
from tests.support.lambda_events import LambdaContext, load_event
from tests.support.observability import log_lines, points_named

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def test_a_line_is_one_compact_json_object_with_its_extra_fields_and_context_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    with log_context(request_id="req-1"):
        logging.getLogger("handler.x").info("hi %s", "雨", extra={"job_id": "gen_1"})
        assert current_log_keys() == {"request_id": "req-1"}
    logging.getLogger("handler.x").warning("after")
    printed = capsys.readouterr().out
    first, after = log_lines(printed)
    assert printed.splitlines()[0].startswith('{"timestamp":')  # one line, no indentation
    assert first["message"] == "hi 雨"
    assert (first["level"], first["logger"], first["service"]) == ("INFO", "handler.x", SERVICE)
    assert (first["job_id"], first["request_id"]) == ("gen_1", "req-1")
    assert first["timestamp"].endswith("+00:00")
    assert "location" not in first
    assert "request_id" not in after, "the context's keys end with it"
    assert current_log_keys() == {}


def test_an_error_line_carries_its_traceback_once(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("handler.x").exception("failed")
    [line] = log_lines(capsys.readouterr().out)
    assert line["exception_name"] == "ValueError"
    assert "ValueError: broken" in line["exception"]
    assert "stack_trace" not in line


def test_each_lambda_request_logs_its_aws_request_id(
    lambda_handler: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    context = LambdaContext(aws_request_id="11111111-2222-3333-4444-555555555555")
    lambda_handler(load_event("health"), context)
    [access] = [line for line in log_lines(capsys.readouterr().out) if line["logger"] == "handler.access"]
    assert access["request_id"] == access["function_request_id"] == context.aws_request_id
    assert (access["method"], access["path"], access["status"]) == ("GET", "/", 200)
    assert isinstance(access["cold_start"], bool)
    assert access["duration_ms"] >= 0
    assert "function_arn" not in access  # compact: the log group already names the function


def test_a_job_invocation_logs_with_its_job_id_and_counts_the_job(
    lambda_handler: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    import handler.app

    invoker = handler.app.app.state.services.jobs
    calls: list[dict[str, Any]] = []
    invoker.client.meta.events.register("provide-client-params.lambda.Invoke", lambda params, **_: calls.append(params))
    event = load_event("generate")
    event["body"] = json.dumps({**json.loads(event["body"]), "duration": 1})
    event["headers"]["prefer"] = "respond-async"
    stubber = Stubber(invoker.client)
    expected = {"FunctionName": ANY, "InvocationType": "Event", "Payload": ANY}
    stubber.add_response("invoke", {"StatusCode": 202}, expected)
    with stubber:
        lambda_handler(event, LambdaContext())
    queued = capsys.readouterr().out
    assert [point.value for point in points_named(queued, "JobsQueued")] == [1]

    context = LambdaContext()
    [call] = calls
    result = lambda_handler(json.loads(call["Payload"]), context)
    assert result["status"] == "succeeded"
    printed = capsys.readouterr().out
    job_lines = [line for line in log_lines(printed) if line["logger"] == "handler.jobs"]
    assert job_lines, "the job logs its outcome"
    for line in job_lines:
        assert (line["job_id"], line["function_request_id"]) == (result["job_id"], context.aws_request_id)
    assert [point.value for point in points_named(printed, "JobsSucceeded")] == [1]
    assert [point.value for point in points_named(printed, "JobsFailed")] == [0]
    [wait] = points_named(printed, "QueueWaitSeconds")
    assert (wait.unit, wait.dimension_sets) == ("Seconds", [{}])
    assert 0 <= wait.value < 120
