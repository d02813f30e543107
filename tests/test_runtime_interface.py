"""The image's exact entry point, minus Docker: `python -m awslambdaric handler.app.handler`.

The Lambda base image's entry point runs AWS's runtime interface client with the Dockerfile's
CMD; here it runs as a process of its own against a local Runtime API, with the environment
template.yaml and the Dockerfile set, and every sample event goes through it.
"""

import json
from collections.abc import Callable

import httpx

from tests.support.contract import body_of, check_response
from tests.support.lambda_events import EVENTS_DIR, load_event
from tests.support.runtime_api import LambdaRuntime
from tests.support.wav import read_wav

TIMEOUT = 180.0
"""Seconds to wait for one answer: the first includes importing torch and loading the model."""


def test_an_unhandled_error_goes_to_the_error_endpoint_then_every_sample_event_is_served(
    lambda_runtime: LambdaRuntime, s3_objects: Callable[[], list[str]]
) -> None:
    """One runtime process for both (each start imports torch and loads the model): the events
    served after the error prove that the runtime keeps serving."""
    api = lambda_runtime.api
    failed = api.invoke({"source": "aws.events", "detail": {}}, TIMEOUT)
    assert failed.outcome == "error", lambda_runtime.log()
    assert failed.body["errorType"] == "RuntimeError"
    assert "infer a handler" in failed.body["errorMessage"]
    # The X-Ray fault the runtime attaches (the template turns tracing on) names the same error.
    cause = json.loads(failed.headers["lambda-runtime-function-xray-error-cause"])
    assert cause["exceptions"][0]["type"] == "RuntimeError"

    generated = None
    for path in sorted(EVENTS_DIR.glob("*.json")):
        event = load_event(path.stem)
        invocation = api.invoke(event, TIMEOUT)
        assert invocation.outcome == "response", lambda_runtime.log()
        check_response(path.stem, event, invocation.body)
        # The request id Lambda assigned reached the app through awslambdaric's context object.
        assert invocation.body["headers"]["x-request-id"] == invocation.request_id
        if path.stem == "generate":
            generated = body_of(invocation.body)

    assert generated is not None
    prefix = lambda_runtime.environment["S3_PREFIX"]
    assert s3_objects() == [
        f"{prefix}/{generated['filename'].removesuffix('.wav')}.json",
        f"{prefix}/{generated['filename']}",
    ]

    download = load_event("download_file")
    download["rawPath"] = download["requestContext"]["http"]["path"] = generated["file_url"]
    redirect = api.invoke(download, TIMEOUT)
    assert redirect.body["statusCode"] == 307
    wav = read_wav(httpx.get(redirect.body["headers"]["location"]).content)
    request = json.loads(load_event("generate")["body"])
    assert (wav.sample_rate, len(wav.samples)) == (32000, request["duration"] * 32000)
