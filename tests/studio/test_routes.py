"""The studio's routes over HTTP: the page, its files and their headers, on both storage backends."""

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from handler.audio.output import AudioFormat, Normalization
from handler.schemas import MAX_PROMPT_CHARS, GenerateRequest
from handler.storage import Storage
from handler.studio import PAGE, STATIC_DIR
from handler.studio.security import content_security_policy
from tests.support.html_page import PageMarkup, parse_page
from tests.support.lambda_events import LambdaContext, load_event

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

ASSETS = {
    "studio.js": "text/javascript",
    "studio.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


@pytest.fixture
def page(client: TestClient) -> PageMarkup:
    response = client.get("/studio")
    assert response.status_code == 200
    return parse_page(response.text)


@pytest.mark.parametrize("path", ["/studio", "/studio/"])
def test_page_is_served_with_its_policy(path: str, client: TestClient, storage: Storage) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == content_security_policy(storage.download_origin)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "<h1>" in response.text


def test_with_s3_the_policy_names_the_presigned_downloads_origin(client: TestClient, storage: Storage) -> None:
    policy = client.get("/studio").headers["content-security-policy"]
    connect = next(part for part in policy.split(";") if part.strip().startswith("connect-src"))
    if storage.backend == "s3":
        origin = storage.download_origin
        assert origin is not None
        assert origin.startswith("http://127.0.0.1:")
        assert connect.split() == ["connect-src", "'self'", origin]
    else:
        assert connect.split() == ["connect-src", "'self'"]


@pytest.mark.parametrize(("name", "content_type"), ASSETS.items())
def test_static_files_are_served_unsniffed_and_revalidated(name: str, content_type: str, client: TestClient) -> None:
    response = client.get(f"/studio/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == (STATIC_DIR / name).read_bytes()
    again = client.get(f"/studio/static/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/studio/static/nothing.js", "/studio/static/../index.html", "/studio/static/"])
def test_anything_else_under_static_is_not_found(path: str, client: TestClient) -> None:
    assert client.get(path).status_code == 404


def test_health_check_stays_json_and_the_page_stays_out_of_the_api_description(client: TestClient) -> None:
    health = client.get("/")
    assert health.headers["content-type"] == "application/json"
    assert health.json()["status"] == "healthy"
    assert not any(path.startswith("/studio") for path in client.get("/openapi.json").json()["paths"])


def test_page_loads_nothing_from_elsewhere_and_has_no_inline_code(page: PageMarkup) -> None:
    links = [tag.attrs[name] or "" for tag in page.tags for name in ("src", "href") if name in tag.attrs]
    assert links
    for link in links:
        assert link.startswith(("/", "#")), link
        assert not link.startswith("//"), link
    for tag in page.tags:
        assert "style" not in tag.attrs, tag
        assert not any(name.startswith("on") for name in tag.attrs), tag
        assert tag.name != "style", tag
        if tag.name == "script":
            assert tag.attrs["src"], tag
            assert not tag.text.strip(), tag


def test_static_files_link_nothing_from_elsewhere() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), path
        assert "https://" not in text, path


def request_schema(field: str) -> dict[str, Any]:
    """`field` as the API's JSON Schema describes it (the number case of an optional one)."""
    schema: dict[str, Any] = GenerateRequest.model_json_schema()["properties"][field]
    return number_case(schema)


def number_case(schema: dict[str, Any]) -> dict[str, Any]:
    numbers = [case for case in schema.get("anyOf", [schema]) if case["type"] in ("integer", "number")]
    return {**schema, **numbers[0]}


def bounds(client: TestClient, field: str) -> tuple[float, float]:
    """The lowest and highest value the deployment takes for `field`, as its OpenAPI document says:
    the longest `duration` is its MAX_DURATION (30 by default, which the page offers)."""
    document = client.get("/openapi.json").json()
    schema = number_case(document["components"]["schemas"]["GenerateRequest"]["properties"][field])
    return float(schema["minimum"]), float(schema["maximum"])


@pytest.mark.parametrize(
    ("control", "field"), [("duration", "duration"), ("guidance", "guidance_scale"), ("temperature", "temperature")]
)
def test_controls_have_the_apis_ranges_and_defaults(
    control: str, field: str, page: PageMarkup, client: TestClient
) -> None:
    attrs = page.by_id(control).attrs
    assert attrs["name"] == field
    assert (float(attrs["min"] or "nan"), float(attrs["max"] or "nan")) == bounds(client, field)
    assert float(attrs["value"] or "nan") == request_schema(field)["default"]
    # Any value the API takes is one the form takes: a clip made with 2.55 can be made again.
    assert attrs["step"] == ("1" if field == "duration" else "any")


def test_duration_and_seed_take_whole_numbers_and_the_seed_is_random_by_default(
    page: PageMarkup, client: TestClient
) -> None:
    assert page.by_id("duration").attrs["step"] == "1"
    seed = page.by_id("seed").attrs
    assert (float(seed["min"] or "nan"), float(seed["max"] or "nan")) == bounds(client, "seed")
    assert seed["step"] == "1"
    assert "value" not in seed
    assert request_schema("seed")["default"] is None
    assert request_schema("seed")["type"] == request_schema("duration")["type"] == "integer"


def test_prompt_is_as_long_as_the_api_takes(page: PageMarkup) -> None:
    assert page.by_id("prompt").attrs["maxlength"] == str(MAX_PROMPT_CHARS)
    assert "required" in page.by_id("prompt").attrs


@pytest.mark.parametrize(
    ("select", "choices", "default"),
    [
        ("format", list(AudioFormat), GenerateRequest.model_fields["format"].default),
        ("normalize", list(Normalization), GenerateRequest.model_fields["normalize"].default),
    ],
)
def test_choices_are_the_apis(select: str, choices: list[str], default: str, page: PageMarkup) -> None:
    options = page.options_of(select)
    assert [option.attrs["value"] for option in options] == [str(choice) for choice in choices]
    assert [option.attrs["value"] for option in options if "selected" in option.attrs] == [str(default)]


def test_library_filter_offers_every_format(page: PageMarkup) -> None:
    values = [option.attrs["value"] for option in page.options_of("format-filter")]
    assert values == ["", *(str(choice) for choice in AudioFormat)]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/studio", PAGE),
        ("/studio/static/studio.js", STATIC_DIR / "studio.js"),
        ("/studio/static/favicon.svg", STATIC_DIR / "favicon.svg"),
    ],
)
def test_through_api_gateway_and_lambda(
    path: str, source: Path, lambda_handler: Handler, lambda_context: LambdaContext
) -> None:
    """The page and its files as the HTTP API's and the Function URL's events reach them, with S3 storage."""
    event = load_event("health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    body = response["body"]
    content = base64.b64decode(body) if response["isBase64Encoded"] else body.encode()
    assert content == source.read_bytes()
    if path == "/studio":
        policy = response["headers"]["content-security-policy"]
        [connect] = [part.split() for part in policy.split(";") if part.split()[0] == "connect-src"]
        assert connect == ["connect-src", "'self'", os.environ["AWS_ENDPOINT_URL_S3"]]
