"""What the API contract says each sample event in infra/events/ must get back."""

import base64
import json
from collections.abc import Callable
from typing import Any

from handler import __version__
from handler.filenames import is_valid_filename
from handler.schemas import ErrorResponse, FileInfo, GenerateResponse, Health


def body_of(response: dict[str, Any]) -> Any:
    """The JSON body of a Lambda proxy response."""
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw)
    return json.loads(raw)


def _health(event: dict[str, Any], response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    body = Health.model_validate(body_of(response))
    assert (body.status, body.device, body.version, body.storage) == ("healthy", "cpu", __version__, "s3")
    assert body.model_error is None


def _generate(event: dict[str, Any], response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200, response
    body = GenerateResponse.model_validate(body_of(response))
    request = json.loads(event["body"])
    assert body.prompt == request["text"]
    assert body.duration == request["duration"]
    assert body.seed == request["seed"]
    assert body.sample_rate == 32000
    assert is_valid_filename(body.filename)
    assert body.file_url == f"/files/{body.filename}"
    assert body.timestamp == body.filename[4:19]


def _generate_bad_request(event: dict[str, Any], response: dict[str, Any]) -> None:
    assert response["statusCode"] == 400
    body = ErrorResponse.model_validate(body_of(response))
    assert body.errors is not None
    assert [error.field for error in body.errors] == ["duration"]


def _list_files(event: dict[str, Any], response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    files = [FileInfo.model_validate(entry) for entry in body_of(response)]
    assert len(files) <= int(event["queryStringParameters"]["limit"])
    assert [f.filename for f in files] == sorted((f.filename for f in files), reverse=True)
    for entry in files:
        assert is_valid_filename(entry.filename)
        assert entry.url == f"/files/{entry.filename}"


def _download_file(event: dict[str, Any], response: dict[str, Any]) -> None:
    # The sample names a file that was never generated.
    assert response["statusCode"] == 404
    assert body_of(response) == {"detail": "File not found"}


def _download_invalid_name(event: dict[str, Any], response: dict[str, Any]) -> None:
    # A name that can't be a generated file's is simply not found (the contract's 404).
    assert response["statusCode"] == 404
    assert set(body_of(response)) == {"detail"}


EXPECTED: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "health": _health,
    "generate": _generate,
    "generate_bad_request": _generate_bad_request,
    "list_files": _list_files,
    "download_file": _download_file,
    "download_invalid_name": _download_invalid_name,
}
"""Per sample event: a check that its Lambda response is what the contract promises."""


def check_response(name: str, event: dict[str, Any], response: dict[str, Any]) -> None:
    """Assert that `response` to the sample event `name` matches the contract."""
    EXPECTED[name](event, response)
