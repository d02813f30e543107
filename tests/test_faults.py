"""Storage failing at each call a generation makes: the API answers 503 or the job fails cleanly,
and afterwards every listed file downloads and nothing half-made is left: no orphan sidecar, no
temporary file, no job record that is not final."""

from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import handler.storage.local
from handler.musicgen.generator import MusicgenGenerator
from handler.settings import Settings
from handler.storage import LocalStorage, S3Storage
from tests.support.app import serve
from tests.support.faults import LOCAL_FAULTS, S3_FAULTS, FailingOs, S3Faults, local_keys, orphan_sidecars
from tests.support.jobs import WaitableJobQueue
from tests.support.storage import fill

ASYNC = {"Prefer": "respond-async"}
REQUEST = {"text": "rain on a tin roof", "duration": 1}
KEPT = 2
"""MAX_FILES here: the storage holds that many before each generation, so saving one prunes one."""

SYNC_STATUS = {"sidecar": 503, "audio": 503, "job record": 200, "list": 200, "delete": 200}
"""A failed write of the file loses the request; a failed prune (list, delete) is retried by the next
save and the new file stands; a synchronous generation writes no job record."""
JOB_OUTCOME = {"sidecar": "failed", "audio": "failed", "job record": None, "list": "succeeded", "delete": "succeeded"}
"""None: the job is refused (503) before anything is recorded."""


def fault_kind(fault: str) -> str:
    return fault.removesuffix(" put").removesuffix(" write")


def assert_consistent(client: TestClient, keys: list[str]) -> None:
    listed = client.get("/files/").json()
    for entry in listed:
        answer = client.get(entry["url"], follow_redirects=False)
        download = httpx.get(answer.headers["location"]) if answer.status_code == 307 else answer
        assert download.status_code == 200, entry
        assert download.content
    assert orphan_sidecars(keys) == []
    assert not [key for key in keys if ".tmp-" in key]
    for key in keys:
        if "jobs/" in key:
            job = client.get(f"/jobs/{key.rsplit('/', 1)[1].removesuffix('.json')}").json()
            assert job["status"] in ("succeeded", "failed"), job


def generate_through_faults(
    client: TestClient, faults: Any, fault: str, keys: Callable[[], list[str]], asynchronous: bool
) -> None:
    kind = fault_kind(fault)
    if not asynchronous:
        response = client.post("/generate/", json=REQUEST)
        assert response.status_code == SYNC_STATUS[kind], response.text
        if response.status_code == 503:
            assert response.json() == {"detail": "Storage unavailable"}
    else:
        response = client.post("/generate/", json=REQUEST, headers=ASYNC)
        jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
        assert isinstance(jobs, WaitableJobQueue)
        jobs.wait_until_idle()
        if JOB_OUTCOME[kind] is None:
            assert response.status_code == 503, response.text
            assert [key for key in keys() if "jobs/" in key] == []
        else:
            assert response.status_code == 202, response.text
            faults.active = False  # to read the outcome
            job = client.get(response.json()["status_url"]).json()
            assert job["status"] == JOB_OUTCOME[kind], job
            if job["status"] == "failed":
                assert job["error"] == "Storage unavailable"
    assert faults.refused > 0  # the fault was met
    faults.active = False
    assert_consistent(client, keys())


def cases(faults: Iterable[str]) -> list[Any]:
    """Each fault with a synchronous generation and with a job, but a job record's write only with
    a job: a synchronous generation writes none."""
    return [
        pytest.param(fault, asynchronous, id=f"{fault}-{'job' if asynchronous else 'sync'}")
        for fault in faults
        for asynchronous in (False, True)
        if asynchronous or fault_kind(fault) != "job record"
    ]


@pytest.mark.parametrize(("fault", "asynchronous"), cases(S3_FAULTS))
def test_s3_failing_at_one_call_of_a_generation(
    fault: str,
    asynchronous: bool,
    settings: Settings,
    s3_storage: S3Storage,
    generator: MusicgenGenerator,
    s3_objects: Callable[[], list[str]],
) -> None:
    fill(s3_storage, KEPT)
    faults = S3Faults(s3_storage, fault)
    capped = settings.model_copy(update={"max_files": KEPT})
    with serve(capped, s3_storage, generator, raise_server_exceptions=False) as client:
        generate_through_faults(client, faults, fault, s3_objects, asynchronous)


@pytest.mark.parametrize(("fault", "asynchronous"), cases(LOCAL_FAULTS))
def test_a_local_disk_failing_at_one_step_of_a_generation(
    fault: str,
    asynchronous: bool,
    settings: Settings,
    local_storage: LocalStorage,
    generator: MusicgenGenerator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fill(local_storage, KEPT)
    faults = FailingOs(fault)
    monkeypatch.setattr(handler.storage.local, "os", faults)
    capped = settings.model_copy(update={"max_files": KEPT})
    with serve(capped, local_storage, generator, raise_server_exceptions=False) as client:
        generate_through_faults(client, faults, fault, lambda: local_keys(local_storage), asynchronous)
