"""Fixtures of the studio's browser tests: Chromium, pages screenshotted when a test fails, served apps."""

from collections.abc import Generator, Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from handler.musicgen.generator import MusicgenGenerator
from handler.settings import Settings
from handler.storage import LocalStorage, S3Storage, Storage
from tests.support.browser import CHROMIUM, PageFactory
from tests.support.infra_files import bucket_cors, load_template
from tests.support.studio import StudioServer, serve_studio

CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each test's outcome on it, so its page fixture knows whether to take screenshots."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium: the system's (Debian's `chromium` package). Module-scoped: Playwright's
    synchronous API runs its event loop in the main thread, which later tests' own loops need."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[PageFactory]:
    """Opens pages; when the test fails, screenshots of each go to test-artifacts/studio/. Every page
    must end without an uncaught script error and without anything refused by its security policy."""
    factory = PageFactory(browser)
    yield factory
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and report.failed:
        for path in factory.screenshot_all(request.node.nodeid):
            report.sections.append(("studio screenshot", str(path)))
    try:
        for watched in factory.pages:
            assert watched.page_errors == [], watched.page_errors
            assert watched.refused == [], watched.refused
    finally:
        factory.close()


@pytest.fixture
def deployed_storage(storage: Storage) -> Storage:
    """Each backend as deployed: S3's bucket with template.yaml's CORS rules, which the page needs."""
    if isinstance(storage, S3Storage):
        storage.client.put_bucket_cors(Bucket=storage.bucket, CORSConfiguration=bucket_cors(load_template()))
    return storage


@pytest.fixture
def studio(settings: Settings, deployed_storage: Storage, generator: MusicgenGenerator) -> Iterator[StudioServer]:
    """The app over uvicorn, once with local storage and once with S3 (moto) behind presigned redirects."""
    with serve_studio(settings, deployed_storage, generator) as server:
        yield server


@pytest.fixture
def local_studio(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> Iterator[StudioServer]:
    """The app over uvicorn with local storage."""
    with serve_studio(settings, local_storage, generator) as server:
        yield server
