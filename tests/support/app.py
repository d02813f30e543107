"""The app under test, served in process."""

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from handler.app import create_app
from handler.musicgen.generator import MusicGenerator
from handler.settings import Settings
from handler.storage import Storage
from tests.support.jobs import WaitableJobQueue


@contextmanager
def serve(
    settings: Settings,
    storage: Storage,
    generator: MusicGenerator,
    raise_server_exceptions: bool = True,
    jobs: WaitableJobQueue | None = None,
) -> Iterator[TestClient]:
    """A test client over a fresh app; on exit, waits for the app's background jobs to finish."""
    jobs = jobs or WaitableJobQueue()
    app = create_app(settings, storage, generator, jobs)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as test_client:
        yield test_client
    jobs.wait_until_idle()
