"""Two server processes sharing one bucket, generating past the file cap at once."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx

from handler.storage import metadata_name
from tests.support.server_process import poll_until, server_process

ASYNC = {"Prefer": "respond-async"}


def has_ended(response: httpx.Response) -> bool:
    return response.status_code == 404 or response.json()["status"] in ("succeeded", "failed")


MAX_FILES = 3
GENERATIONS = 8


def test_two_servers_on_one_bucket_keep_exactly_the_cap_and_every_listed_file_downloads(
    tiny_model_dir: Path, tmp_path: Path, s3_bucket: str, s3_objects: Callable[[], list[str]]
) -> None:
    env = {
        "MODEL_ID": str(tiny_model_dir),
        "S3_BUCKET": s3_bucket,
        "S3_PREFIX": "generated",
        "MAX_FILES": str(MAX_FILES),
        "STORAGE_DIR": str(tmp_path / "unused"),
    }
    with server_process(env, tmp_path / "first.log") as first, server_process(env, tmp_path / "second.log") as second:
        urls = [first.url, second.url] * (GENERATIONS // 2)

        def generate(index: int) -> str:
            body = {"text": f"take {index}", "duration": 1, "seed": index}
            response = httpx.post(f"{urls[index]}/generate/", json=body, headers=ASYNC, timeout=120)
            assert response.status_code == 202, response.text
            return f"{urls[index]}{response.json()['status_url']}"

        with ThreadPoolExecutor(GENERATIONS) as pool:
            status_urls = list(pool.map(generate, range(GENERATIONS)))
        # A job's record goes once it has ended and is past the cap: its end is then in its server's log.
        finals = [poll_until(partial(httpx.get, url), has_ended) for url in status_urls]
        finished = {
            record["job_id"]: record["status"]
            for server in (first, second)
            for record in server.log_records()
            if record["message"] == "job finished"
        }
        for url, final in zip(status_urls, finals, strict=True):
            status = final.json()["status"] if final.status_code == 200 else finished[url.rsplit("/", 1)[1]]
            assert status == "succeeded"

        for server in (first, second):
            listed = httpx.get(f"{server.url}/files/").json()
            assert len(listed) == MAX_FILES
            for entry in listed:
                download = httpx.get(f"{server.url}{entry['url']}", follow_redirects=True)
                assert download.status_code == 200
                assert download.content[:4] == b"RIFF"
    audio = [key for key in s3_objects() if key.endswith(".wav")]
    assert len(audio) == MAX_FILES
    assert sorted(key for key in s3_objects() if key.endswith(".json") and "/jobs/" not in key) == sorted(
        metadata_name(key) for key in audio
    )
