"""The Lambda entry point, driven with the API Gateway events kept in infra/events/."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from handler.cpu import cpu_has_bf16
from handler.musicgen.generator import MusicgenGenerator
from handler.native import runtime
from handler.settings import Settings
from handler.storage import LocalStorage
from tests.support.app import serve
from tests.support.contract import EXPECTED, body_of, check_response
from tests.support.doubles import LoadWatcher
from tests.support.lambda_events import EVENTS_DIR, LambdaContext, load_event
from tests.support.wav import read_wav

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def test_every_sample_event_is_an_http_api_v2_event() -> None:
    names = sorted(path.stem for path in EVENTS_DIR.glob("*.json"))
    assert {"health", "generate", "generate_bad_request", "list_files", "download_file"} <= set(names)
    for name in names:
        event = load_event(name)
        assert event["version"] == "2.0"
        assert event["isBase64Encoded"] is False
        if "body" in event:
            json.loads(event["body"])


SAMPLE_EVENTS = sorted(path.stem for path in EVENTS_DIR.glob("*.json"))


def test_every_sample_event_has_a_contract_check() -> None:
    assert sorted(EXPECTED) == SAMPLE_EVENTS


@pytest.mark.parametrize("name", SAMPLE_EVENTS)
def test_sample_event_gets_the_contract_response(name: str, lambda_handler: Handler) -> None:
    event = load_event(name)
    context = LambdaContext()
    response = lambda_handler(event, context)
    check_response(name, event, response)
    assert response["headers"]["x-request-id"] == context.aws_request_id


def test_health_event(lambda_handler: Handler, lambda_context: LambdaContext) -> None:
    response = lambda_handler(load_event("health"), lambda_context)
    assert response["statusCode"] == 200
    body = body_of(response)
    assert body["status"] == "healthy"
    assert body["storage"] == "s3"
    assert body["model_loaded"] is False
    assert response["headers"]["x-request-id"] == lambda_context.aws_request_id


def test_generate_list_and_download_events(
    lambda_handler: Handler, lambda_context: LambdaContext, s3_objects: Callable[[], list[str]]
) -> None:
    generated = lambda_handler(load_event("generate"), lambda_context)
    assert generated["statusCode"] == 200
    result = body_of(generated)
    request = json.loads(load_event("generate")["body"])
    assert result["prompt"] == request["text"]
    assert result["duration"] == request["duration"]
    filename = result["file_url"].removeprefix("/files/")
    assert s3_objects() == [f"generated/{filename.removesuffix('.wav')}.json", f"generated/{filename}"]

    listed = lambda_handler(load_event("list_files"), LambdaContext())
    assert listed["statusCode"] == 200
    assert [entry["filename"] for entry in body_of(listed)] == [filename]

    download_event = load_event("download_file")
    download_event["rawPath"] = download_event["requestContext"]["http"]["path"] = result["file_url"]
    redirect = lambda_handler(download_event, LambdaContext())
    assert redirect["statusCode"] == 307
    wav = read_wav(httpx.get(redirect["headers"]["location"]).content)
    assert (wav.sample_rate, len(wav.samples)) == (32000, request["duration"] * 32000)


def test_same_seed_event_twice_gives_identical_audio(lambda_handler: Handler, lambda_context: LambdaContext) -> None:
    urls = []
    for _ in range(2):
        file_url = body_of(lambda_handler(load_event("generate"), LambdaContext()))["file_url"]
        download_event = load_event("download_file")
        download_event["rawPath"] = download_event["requestContext"]["http"]["path"] = file_url
        urls.append(lambda_handler(download_event, LambdaContext())["headers"]["location"])
    assert httpx.get(urls[0]).content == httpx.get(urls[1]).content


def test_bad_request_event_is_400(
    lambda_handler: Handler, lambda_context: LambdaContext, s3_objects: Callable[[], list[str]]
) -> None:
    response = lambda_handler(load_event("generate_bad_request"), lambda_context)
    assert response["statusCode"] == 400
    assert body_of(response)["errors"][0]["field"] == "duration"
    assert s3_objects() == []


def test_download_of_missing_file_event_is_404(lambda_handler: Handler, lambda_context: LambdaContext) -> None:
    response = lambda_handler(load_event("download_file"), lambda_context)
    assert response["statusCode"] == 404
    assert body_of(response) == {"detail": "File not found"}


def test_download_with_traversal_name_is_not_found(lambda_handler: Handler, lambda_context: LambdaContext) -> None:
    response = lambda_handler(load_event("download_invalid_name"), lambda_context)
    assert response["statusCode"] == 404
    assert body_of(response)["detail"] in {"File not found", "Not Found"}


def test_a_local_server_loads_the_model_as_it_starts(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    watched = LoadWatcher(generator)
    with serve(settings, local_storage, watched) as client:
        assert watched.load_done.wait(timeout=30)  # no request asked for it
        assert not watched.started.is_set()
        served = client.get("/").json()["served_model"]
    assert served["precision"] == settings.model_precision == "int8"
    kernels = runtime.best()
    assert kernels is not None
    # which kernels and EnCodec dtype this CPU got: what an operator checks after a deploy
    assert served["kernels"] == kernels.variant.name
    assert served["audio_decoder_dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")
