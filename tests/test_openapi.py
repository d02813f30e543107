"""The OpenAPI document says what the API does: a contract fuzzer finds no mismatch."""

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from handler.app import create_app
from handler.security.keys import key_digest, new_key
from handler.settings import Settings
from handler.storage import LocalStorage, Storage
from tests.support.doubles import ToneGenerator
from tests.support.fuzzing import fuzz
from tests.support.jobs import WaitableJobQueue

MAX_EXAMPLES = {"local": 10, "s3": 6}
"""Examples per operation and phase: enough to reach each status code (`REACHED` says which),
bounded for CI's two cores (each S3 answer is several HTTP round trips to moto; the coverage phase
generates every boundary case whatever the number). `python -m benchmarks.fuzz` is the long run."""

REACHED = {"local": {200, 204, 400, 404, 405}, "s3": {200, 204, 307, 400, 404, 405}}
"""Answers a run must have seen (the ones 25 and 10 examples reached): generations, listings,
downloads (S3's through a presigned redirect) and deletes, refused input, missing files and jobs,
undeclared methods."""

CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
}
"""Checks `--checks all` runs that this API's answers exercise (a run that skipped them proves nothing)."""


@pytest.fixture
def fast_app(settings: Settings, storage: Storage) -> Iterator[FastAPI]:
    """The app over each storage backend with an engine that answers at once, so the fuzzer's
    generations cost nothing; its background jobs are waited for at the end."""
    jobs = WaitableJobQueue()
    app = create_app(settings, storage, ToneGenerator(), jobs)
    yield app
    jobs.wait_until_idle()


@pytest.fixture
def keyed_app(settings: Settings, local_storage: LocalStorage) -> Iterator[tuple[FastAPI, str]]:
    """The fast app with API keys on, and the key it accepts."""
    key = new_key()
    jobs = WaitableJobQueue()
    keyed = settings.model_copy(update={"api_keys": key_digest(key)})
    yield create_app(keyed, local_storage, ToneGenerator(), jobs), key
    jobs.wait_until_idle()


def test_schemathesis_finds_no_contract_failure(fast_app: FastAPI, storage: Storage) -> None:
    report = fuzz(fast_app, MAX_EXAMPLES[storage.backend], seed=14)
    assert report.completed
    assert report.failures == []
    assert report.checks_run >= CHECKS
    assert report.statuses >= REACHED[storage.backend]


def test_the_document_has_no_422_and_documents_every_answer(fast_app: FastAPI) -> None:
    document = TestClient(fast_app).get("/openapi.json").json()
    statuses = {
        (path, method): set(operation["responses"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert statuses == {
        ("/", "get"): {"200", "500"},
        ("/generate/", "post"): {"200", "202", "400", "413", "429", "500", "503"},
        ("/jobs/{job_id}", "get"): {"200", "404", "500", "503"},
        ("/files/", "get"): {"200", "400", "500", "503"},
        ("/files/{filename}/info", "get"): {"200", "404", "500", "503"},
        ("/files/{filename}", "get"): {"200", "307", "404", "500", "503"},
        ("/files/{filename}", "delete"): {"204", "404", "409", "500", "503"},
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
    download = document["paths"]["/files/{filename}"]["get"]
    assert set(download["responses"]["200"]["content"]) == {"audio/wav", "audio/flac", "audio/ogg", "audio/mpeg"}
    [name] = download["parameters"]
    assert name["schema"]["pattern"] == r"^gen_(\d{8}_\d{6})_[0-9a-f]{8}\.(wav|flac|ogg|mp3)$"
    body = document["components"]["schemas"]["GenerateRequest"]["properties"]
    assert document["components"]["schemas"]["AudioFormat"]["enum"] == ["wav", "flac", "ogg", "mp3"]
    assert document["components"]["schemas"]["Normalization"]["enum"] == ["loudness", "peak", "none"]
    assert (body["format"]["default"], body["normalize"]["default"]) == ("wav", "loudness")
    assert (body["duration"]["type"], body["duration"]["minimum"], body["duration"]["maximum"]) == ("integer", 1, 30)
    assert (body["takes"]["type"], body["takes"]["minimum"], body["takes"]["maximum"]) == ("integer", 1, 4)
    assert body["takes"]["default"] == 1


def test_the_documented_longest_clip_is_the_deployments_max_duration(settings: Settings, storage: Storage) -> None:
    app = create_app(settings.model_copy(update={"max_duration": 120}), storage, ToneGenerator(), WaitableJobQueue())
    document = TestClient(app).get("/openapi.json").json()
    assert document["components"]["schemas"]["GenerateRequest"]["properties"]["duration"]["maximum"] == 120


def test_a_method_no_route_answers_is_405_naming_every_method_the_path_has(fast_app: FastAPI) -> None:
    client = TestClient(fast_app)
    response = client.put("/files/gen_20250528_134211_a1b2c3d4.wav")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"
    assert client.delete("/files/").headers["allow"] == "GET, HEAD"


def test_with_api_keys_on_the_document_names_them_and_their_401_and_still_holds(
    keyed_app: tuple[FastAPI, str],
) -> None:
    app, key = keyed_app
    document = TestClient(app).get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearerKey", "apiKeyHeader"}
    operations = {(path, method): op for path, item in document["paths"].items() for method, op in item.items()}
    assert "security" not in operations[("/", "get")]
    assert "401" not in operations[("/", "get")]["responses"]
    for where, operation in operations.items():
        if where != ("/", "get"):
            assert operation["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}], where
            assert "401" in operation["responses"], where
    report = fuzz(app, max_examples=6, seed=15, headers={"Authorization": f"Bearer {key}"})
    assert report.completed
    assert report.failures == []
    assert "ignored_auth" in report.checks_run
    assert report.statuses >= REACHED["local"] | {401}
