from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from handler.musicgen.generator import MusicgenGenerator
from handler.routes import router
from handler.security.auth import is_public
from handler.security.keys import key_digest, new_key
from handler.settings import Settings
from handler.storage import LocalStorage
from tests.support.app import serve

KEY = new_key()
OTHER_KEY = new_key()
SAMPLE_PATH_VALUES = {"filename": "gen_20260101_000000_0123abcd.wav", "job_id": "20260101_000000_0123abcd"}


@pytest.fixture
def keyed_client(settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator) -> Iterator[TestClient]:
    keyed = settings.model_copy(update={"api_keys": f"{key_digest(OTHER_KEY)},{key_digest(KEY)}"})
    with serve(keyed, local_storage, generator) as test_client:
        yield test_client


def protected_requests() -> list[tuple[str, str]]:
    """(method, path) of every API route that needs a key, path parameters filled in."""
    requests = []
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        path = route.path_format.format(**SAMPLE_PATH_VALUES)
        for method in sorted(route.methods or ()):
            if not is_public(method, path):
                requests.append((method, path))
    return requests


PROTECTED = protected_requests()


def test_every_route_but_the_health_check_and_docs_is_protected() -> None:
    paths = {path for _, path in PROTECTED}
    assert {"/generate/", "/files/", "/jobs/20260101_000000_0123abcd"} <= paths
    assert ("GET", "/") not in PROTECTED


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Bearer {OTHER_KEY}x"}, {"Authorization": f"Basic {KEY}"}, {"X-API-Key": "wrong"}],
    ids=["no key", "wrong key", "not bearer", "wrong header key"],
)
def test_a_request_without_an_accepted_key_is_refused(
    keyed_client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = keyed_client.request(method, path, headers=headers, json={"text": "x"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}], ids=["bearer", "x-api-key"]
)
def test_an_accepted_key_in_either_header_passes(
    keyed_client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = keyed_client.request(method, path, headers=headers, json={"text": "x", "duration": 1})
    assert response.status_code != 401


def test_a_refused_request_changes_nothing(keyed_client: TestClient, local_storage: LocalStorage) -> None:
    response = keyed_client.post("/generate/", json={"text": "x", "duration": 1})
    assert response.status_code == 401
    assert local_storage.list_files() == []
    assert keyed_client.get("/files/", headers={"X-API-Key": KEY}).json() == []


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json"])
def test_the_health_check_and_docs_need_no_key(keyed_client: TestClient, path: str) -> None:
    assert keyed_client.get(path).status_code == 200


def test_the_health_check_says_whether_keys_are_needed(keyed_client: TestClient, local_client: TestClient) -> None:
    assert keyed_client.get("/").json()["auth"] == "api_key"
    assert local_client.get("/").json()["auth"] == "none"


def test_without_keys_configured_the_api_is_open(local_client: TestClient) -> None:
    assert local_client.get("/files/").status_code == 200


def test_only_reads_of_the_public_paths_are_public() -> None:
    assert is_public("GET", "/studio/studio.js")
    assert not is_public("POST", "/")
    assert not is_public("GET", "/studiox")
    assert not is_public("GET", "/files/")
