"""The catalogue: listing with each file's provenance, filters, one file's entry, and deleting a file."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from handler.audio.output import AudioFormat
from handler.catalog import FileBusyError, delete_file, entry
from handler.filenames import job_id_for, new_filename
from handler.musicgen.generator import MusicgenGenerator
from handler.settings import Settings
from handler.storage import LocalStorage, Storage, StoredFile
from tests.support.api import PROMPT, download, generate
from tests.support.app import serve
from tests.support.doubles import GatedGenerator
from tests.support.jobs import WaitableJobQueue
from tests.support.storage import START, fill

ASYNC = {"Prefer": "respond-async"}


def wait_for_jobs(client: TestClient) -> None:
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    assert isinstance(jobs, WaitableJobQueue)
    jobs.wait_until_idle()


def test_entries_carry_what_the_sidecar_knows(client: TestClient) -> None:
    body = generate(
        client, text="Rain on a Tin Roof", duration=2, seed=11, guidance_scale=2.5, temperature=0.7, format="flac"
    ).json()
    [listed] = client.get("/files/").json()
    assert listed == {
        "filename": body["filename"],
        "url": body["file_url"],
        "created_at": listed["created_at"],
        "size_kb": listed["size_kb"],
        "format": "flac",
        "content_type": "audio/flac",
        "prompt": "Rain on a Tin Roof",
        "duration": 2.0,
        "seed": 11,
        "guidance_scale": 2.5,
        "temperature": 0.7,
        "normalize": "loudness",
        "loudness_lufs": pytest.approx(body["loudness_lufs"], abs=0.01),
    }
    assert listed["size_kb"] == pytest.approx(len(download(client, body["file_url"])) / 1024, abs=0.1)
    assert listed["created_at"] == datetime.strptime(body["timestamp"], "%Y%m%d_%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
    assert client.get(f"{body['file_url']}/info").json() == listed


def test_a_file_without_a_sidecar_still_lists_with_nulls(client: TestClient, storage: Storage) -> None:
    name = new_filename(START, AudioFormat.WAV)
    storage.save(name, b"RIFF" * 256, {})
    [listed] = client.get("/files/").json()
    assert listed == {
        "filename": name,
        "url": f"/files/{name}",
        "created_at": "2025-05-28 13:42:11",
        "size_kb": 1.0,
        "format": "wav",
        "content_type": "audio/wav",
        "prompt": None,
        "duration": None,
        "seed": None,
        "guidance_scale": None,
        "temperature": None,
        "normalize": None,
        "loudness_lufs": None,
    }
    assert client.get(f"/files/{name}/info").json() == listed


def test_a_sidecar_written_before_formats_lists_its_parameters() -> None:
    # The sidecar of a file made before this API offered formats, as that code wrote it.
    name = "gen_20250528_134211_a1b2c3d4.wav"
    old = {
        "prompt": "rain",
        "duration": 3,
        "guidance_scale": 3.0,
        "temperature": 1.0,
        "seed": 42,
        "model_id": "facebook/musicgen-small",
        "sample_rate": 32000,
        "created_at": "2025-05-28T13:42:11.250000+00:00",
    }
    listed = entry(StoredFile(name, 2048, START, START), old)
    assert (listed.prompt, listed.duration, listed.seed, listed.normalize, listed.loudness_lufs) == (
        "rain",
        3.0,
        42,
        None,
        None,
    )


def test_a_sidecar_with_nonsense_values_lists_as_nulls() -> None:
    name = new_filename(START, AudioFormat.OGG)
    listed = entry(StoredFile(name, 2048, START, START), {"prompt": ["not", "text"], "seed": "many"})
    assert (listed.format, listed.prompt, listed.seed) == (AudioFormat.OGG, None, None)


def test_filters_by_format_and_prompt_text_then_pages(client: TestClient, storage: Storage) -> None:
    prompts = ["Rainy JAZZ piano", "epic drums", "jazz trio", "ambient pads", "late night jazz"]
    formats = ["wav", "mp3", "mp3", "flac", "mp3"]
    names = [
        generate(client, text=prompt, format=audio_format).json()["filename"]
        for prompt, audio_format in zip(prompts, formats, strict=True)
    ]
    storage.save(new_filename(START, AudioFormat.MP3), b"ID3", {})  # no sidecar: no prompt to match

    def listed(query: str) -> list[str]:
        response = client.get(f"/files/?{query}")
        assert response.status_code == 200
        return [f["filename"] for f in response.json()]

    assert listed("format=flac") == [names[3]]
    assert listed("q=jazz") == [names[4], names[2], names[0]]
    assert listed("q=JaZz&format=mp3") == [names[4], names[2]]
    assert listed("q=jazz&limit=1&skip=1") == [names[2]]
    assert listed("q=violin") == []
    assert len(listed("format=mp3")) == 4
    assert listed("q=") == listed("limit=100")


@pytest.mark.parametrize(("query", "field"), [("format=aac", "format"), ("q=" + "x" * 501, "q")])
def test_bad_filters_are_400(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/files/?{query}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_info_of_a_missing_file_is_404(client: TestClient) -> None:
    for name in ("gen_20250528_134211_a1b2c3d4.mp3", "nothing.wav", "0"):
        response = client.get(f"/files/{name}/info")
        assert response.status_code == 404
        assert response.json() == {"detail": "File not found"}


def test_delete_removes_the_file_its_sidecar_and_its_job_record_everywhere(
    client: TestClient, storage: Storage, tmp_path: Path
) -> None:
    keep = generate(client).json()
    accepted = client.post("/generate/", json={"text": PROMPT, "duration": 1, "format": "ogg"}, headers=ASYNC).json()
    wait_for_jobs(client)
    file_url = accepted["file_url"]
    assert client.get(accepted["status_url"]).json()["status"] == "succeeded"
    presigned = client.get(file_url, follow_redirects=False).headers.get("location")

    response = client.delete(file_url)
    assert response.status_code == 204
    assert response.content == b""

    assert [f["filename"] for f in client.get("/files/").json()] == [keep["filename"]]
    assert client.get(file_url).status_code == 404
    assert client.get(f"{file_url}/info").status_code == 404
    assert client.get(accepted["status_url"]).status_code == 404
    filename = file_url.rsplit("/", 1)[1]
    assert storage.stat(filename) is None
    assert storage.read_metadata([filename]) == {}
    assert job_id_for(filename) not in storage.list_jobs()
    if presigned is not None:  # S3: the object is gone from the bucket (a missing key answers 403 or 404)
        assert httpx.get(presigned).status_code in {403, 404}
    second = client.delete(file_url)
    assert second.status_code == 404
    assert second.json() == {"detail": "File not found"}
    assert client.get(keep["file_url"], follow_redirects=False).status_code in {200, 307}


def test_delete_of_a_file_that_never_existed_is_404_and_changes_nothing(client: TestClient, storage: Storage) -> None:
    names = fill(storage, 2)
    response = client.delete("/files/gen_20250528_134211_a1b2c3d4.flac")
    assert response.status_code == 404
    assert [f.filename for f in storage.list_files()] == names[::-1]


def test_delete_is_refused_while_the_files_job_runs_then_allowed(
    settings: Settings, storage: Storage, generator: MusicgenGenerator
) -> None:
    gated = GatedGenerator(generator)
    with serve(settings, storage, gated) as client:
        queued_first = client.post("/generate/", json={"text": "drums", "duration": 1}, headers=ASYNC).json()
        assert gated.started.wait(timeout=30)
        queued_second = client.post("/generate/", json={"text": "bass", "duration": 1}, headers=ASYNC).json()
        for job in (queued_first, queued_second):  # one running, one queued behind it
            response = client.delete(job["file_url"])
            assert response.status_code == 409
            assert response.json() == {"detail": "The file's job is still running"}
        gated.gate.set()
        wait_for_jobs(client)
        assert client.get(queued_first["status_url"]).json()["status"] == "succeeded"
        assert client.delete(queued_first["file_url"]).status_code == 204
        assert client.delete(queued_second["file_url"]).status_code == 204
    assert storage.list_files() == []
    assert storage.list_jobs() == []


def test_a_job_record_of_another_format_is_not_this_files(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1, (AudioFormat.WAV,))
    other = name.replace(".wav", ".mp3")
    local_storage.put_job(job_id_for(name), running_record(job_id_for(name), "mp3"))
    assert delete_file(local_storage, name, datetime.now(UTC)) is True
    assert local_storage.get_job(job_id_for(name)) is not None, "the record belongs to the mp3"
    with pytest.raises(FileBusyError):
        delete_file(local_storage, other, datetime.now(UTC))


def running_record(job_id: str, audio_format: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "job_id": job_id,
        "status": "running",
        "created_at": now,
        "updated_at": now,
        "deadline": "2999-01-01T00:00:00+00:00",
        "params": {"prompt": "x", "duration": 1, "guidance_scale": 3.0, "temperature": 1.0, "seed": 1},
        "output": {"format": audio_format, "normalize": "loudness"},
    }
