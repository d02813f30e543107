"""The studio under test: the real app over real HTTP, and the API beside it for checks."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from handler.app import create_app
from handler.musicgen.generator import MusicGenerator
from handler.settings import Settings
from handler.storage import Storage
from tests.support.jobs import WaitableJobQueue
from tests.support.live_server import live_server

PROMPT = "A lofi hip hop beat with smooth jazz piano and rain sounds"


@dataclass
class StudioServer:
    """A served app: where the page is, and a client of the same API for the test's own checks."""

    base_url: str
    storage: Storage
    api: httpx.Client

    @property
    def page_url(self) -> str:
        """The studio page."""
        return f"{self.base_url}/studio"

    def file_bytes(self, file_url: str) -> bytes:
        """A file's bytes as a client downloads them, following a presigned redirect."""
        response = self.api.get(file_url, follow_redirects=True)
        assert response.status_code == 200, response.text
        return response.content

    def filenames(self) -> list[str]:
        """Every listed file, newest first."""
        response = self.api.get("/files/", params={"limit": 100})
        assert response.status_code == 200, response.text
        return [entry["filename"] for entry in response.json()]


@contextmanager
def serve_studio(
    settings: Settings,
    storage: Storage,
    generator: MusicGenerator,
    headers: dict[str, str] | None = None,
) -> Iterator[StudioServer]:
    """The app over uvicorn on 127.0.0.1; `headers` go with the test's own API calls. On exit, its jobs finished."""
    jobs = WaitableJobQueue()
    app = create_app(settings, storage, generator, jobs)
    with live_server(app) as base_url, httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        yield StudioServer(base_url, storage, client)
        jobs.wait_until_idle()
