"""A server killed in the middle of a job, and the server started after it."""

import os
from pathlib import Path

import httpx

from handler.job_records import ABANDONED_ERROR
from tests.support.server_process import poll_until, server_process

ASYNC = {"Prefer": "respond-async"}


def test_a_server_killed_mid_job_leaves_a_failed_job_and_nothing_half_written(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    storage_dir = tmp_path / "generated"
    env = {"MODEL_ID": str(tiny_model_dir), "STORAGE_DIR": str(storage_dir)}
    with server_process(env, tmp_path / "first.log") as first:
        accepted = httpx.post(
            f"{first.url}/generate/", json={"text": "rain", "duration": 30}, headers=ASYNC, timeout=60
        )
        assert accepted.status_code == 202
        job_url = f"{first.url}/jobs/{accepted.json()['job_id']}"
        poll_until(lambda: httpx.get(job_url).json()["status"], lambda status: status == "running")
        # What a kill in the middle of a write leaves; and a live writer's file, which must stay.
        killed_writers_file = storage_dir / f".tmp-{first.pid}-abc123"
        killed_writers_file.write_bytes(b"half a file")
        live_writers_file = storage_dir / f".tmp-{os.getpid()}-def456"
        live_writers_file.write_bytes(b"being written")
        first.kill()

    with server_process(env, tmp_path / "second.log") as second:
        job = httpx.get(f"{second.url}/jobs/{accepted.json()['job_id']}", timeout=60).json()
        assert job["status"] == "failed"
        assert job["error"] == ABANDONED_ERROR
        assert httpx.get(f"{second.url}/files/").json() == []
        assert not killed_writers_file.exists()
        assert live_writers_file.exists()
        assert [path.name for path in storage_dir.iterdir() if path.is_file()] == [live_writers_file.name]
