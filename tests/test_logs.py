"""Structured JSON logs carrying the Lambda request id."""

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from handler.logs import JsonFormatter, request_id
from tests.support.lambda_events import LambdaContext, load_event


def test_formatter_writes_one_json_object_with_extra_fields_and_request_id() -> None:
    record = logging.makeLogRecord({"name": "handler.x", "levelname": "INFO", "msg": "hi %s", "args": ("雨",)})
    record.job_id = "gen_1"
    token = request_id.set("req-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert entry["message"] == "hi 雨"
    assert entry["level"] == "INFO"
    assert entry["job_id"] == "gen_1"
    assert entry["request_id"] == "req-1"


def test_each_lambda_request_logs_its_aws_request_id(
    lambda_handler: Callable[[dict[str, Any], Any], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    context = LambdaContext(aws_request_id="11111111-2222-3333-4444-555555555555")
    lambda_handler(load_event("health"), context)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line["logger"] == "handler.access"]
    assert access["request_id"] == context.aws_request_id
    assert access["path"] == "/"
    assert access["status"] == 200
    assert isinstance(access["cold_start"], bool)
