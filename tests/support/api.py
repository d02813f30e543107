"""Calls the API tests make: a generation, and a download that follows S3's presigned redirect."""

from typing import Any

import httpx
import httpx2
from fastapi.testclient import TestClient

from handler.filenames import format_of

PROMPT = "A lofi hip hop beat with smooth jazz piano and rain sounds"


def generate(client: TestClient, path: str = "/generate/", **body: Any) -> httpx2.Response:
    """POST a one-second generation of PROMPT, with `body` on top."""
    return client.post(path, json={"text": PROMPT, "duration": 1, **body})


def download(client: TestClient, file_url: str) -> bytes:
    """The file's bytes, following a presigned-URL redirect with a real HTTP client; either way the
    download carries the format's Content-Type."""
    media_type = format_of(file_url.rsplit("/", 1)[1]).media_type
    response = client.get(file_url, follow_redirects=False)
    if response.status_code == 307:
        location = response.headers["location"]
        s3_response = httpx.get(location)
        assert s3_response.status_code == 200
        assert s3_response.headers["content-type"] == media_type
        assert "attachment" in s3_response.headers["content-disposition"]
        assert file_url.rsplit("/", 1)[1] in s3_response.headers["content-disposition"]
        return s3_response.content
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    return response.content
