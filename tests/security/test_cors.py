from fastapi.testclient import TestClient

from handler.musicgen.generator import MusicgenGenerator
from handler.security.keys import key_digest
from handler.settings import Settings
from handler.storage import LocalStorage
from tests.support.app import serve

ORIGIN = "https://music.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cross_origin_calls_are_not_allowed_by_default(local_client: TestClient) -> None:
    response = local_client.get("/files/", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in local_client.options("/generate/", headers=PREFLIGHT).headers


def test_named_origins_are_allowed_and_their_preflight_needs_no_key(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    configured = settings.model_copy(
        update={"cors_origins": f"{ORIGIN}, https://other.example.com", "api_keys": key_digest("k")}
    )
    with serve(configured, local_storage, generator) as client:
        preflight = client.options("/generate/", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        refused = client.get("/files/", headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN  # the page can read the refusal
        stranger = client.get("/files/", headers={"Origin": "https://evil.example.com", "X-API-Key": "k"})
        assert stranger.status_code == 200
        assert "Access-Control-Allow-Origin" not in stranger.headers
