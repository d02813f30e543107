import pytest
from fastapi.testclient import TestClient

from handler.security.headers import SECURITY_HEADERS


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/"), ("GET", "/files/"), ("GET", "/files/nope.wav"), ("POST", "/generate/")]
)
def test_every_response_carries_the_security_headers(local_client: TestClient, method: str, path: str) -> None:
    response = local_client.request(method, path, json={})
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert response.headers["Cache-Control"] == "no-store"  # all of these answer JSON


def test_the_docs_page_is_not_marked_no_store(local_client: TestClient) -> None:
    response = local_client.get("/docs")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Cache-Control" not in response.headers
