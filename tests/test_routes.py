"""The HTTP contract, against both storage backends and the tiny real model."""

import threading
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from handler.app import create_app
from handler.filenames import is_valid_filename
from handler.musicgen.generator import MusicgenGenerator
from handler.schemas import MAX_PROMPT_CHARS
from handler.settings import Settings
from handler.storage import LocalStorage, Storage
from tests.support.api import PROMPT, download, generate
from tests.support.app import serve
from tests.support.audio import decode
from tests.support.doubles import FailingGenerator, GatedGenerator
from tests.support.observability import log_lines
from tests.support.storage import FailingSecondSave
from tests.support.wav import read_wav


def test_health_reports_the_spec_fields(client: TestClient, tiny_model_dir: Path) -> None:
    body = client.get("/").json()
    assert body["status"] == "healthy"
    assert body["device"] == "cpu"
    assert body["version"] == "1.0.0"
    assert body["model"] == tiny_model_dir.name
    assert body["storage"] in {"local", "s3"}


def test_generate_list_download_round_trip(client: TestClient) -> None:
    response = generate(client, duration=2, seed=7)
    assert response.status_code == 200
    body = response.json()
    filename = body["file_url"].removeprefix("/files/")
    assert is_valid_filename(filename)
    assert body["duration"] == 2
    assert body["prompt"] == PROMPT
    assert body["seed"] == 7
    assert filename.startswith(f"gen_{body['timestamp']}_")

    listed = client.get("/files/").json()
    assert [entry["filename"] for entry in listed] == [filename]
    assert listed[0]["url"] == body["file_url"]
    assert listed[0]["size_kb"] > 0

    wav = read_wav(download(client, body["file_url"]))
    assert (wav.sample_rate, wav.channels, wav.sample_width) == (32000, 1, 2)
    assert len(wav.samples) == 2 * 32000
    assert 0 < np.max(np.abs(wav.samples.astype(np.int32))) < 32767


@pytest.mark.parametrize("path", ["/generate", "/generate/"])
def test_generate_answers_on_both_paths_without_redirect(client: TestClient, path: str) -> None:
    assert generate(client, path).status_code == 200


@pytest.mark.parametrize("path", ["/files", "/files/"])
def test_files_answers_on_both_paths_without_redirect(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
def test_each_format_is_stored_under_its_extension_and_decodes_at_32_khz(client: TestClient, audio_format: str) -> None:
    response = generate(client, duration=2, seed=3, format=audio_format)
    assert response.status_code == 200
    body = response.json()
    assert body["filename"].endswith(f".{audio_format}")
    assert is_valid_filename(body["filename"])
    assert body["file_url"] == f"/files/{body['filename']}"
    assert (body["format"], body["normalize"]) == (audio_format, "loudness")
    assert (
        body["content_type"]
        == {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}[audio_format]
    )
    decoded = decode(download(client, body["file_url"]))
    assert (decoded.sample_rate, decoded.channels, len(decoded.samples)) == (32000, 1, 2 * 32000)


def test_same_seed_gives_the_same_audio_in_every_format(local_client: TestClient) -> None:
    def pcm(audio_format: str) -> Any:
        body = generate(local_client, seed=1234, format=audio_format).json()
        return decode(download(local_client, body["file_url"])).pcm

    wav = pcm("wav")
    assert np.array_equal(pcm("flac"), wav)
    for lossy in ("ogg", "mp3"):
        first = pcm(lossy)
        assert np.array_equal(pcm(lossy), first)
        residual = first.astype(np.float64) - wav
        assert 10 * np.log10(np.sum(wav.astype(np.float64) ** 2) / np.sum(residual**2)) > 10


def test_each_normalisation_sets_the_level_and_reports_the_loudness(local_client: TestClient) -> None:
    bodies = {mode: generate(local_client, seed=8, normalize=mode).json() for mode in ("loudness", "peak", "none")}
    peaks = {
        mode: int(np.max(np.abs(decode(download(local_client, body["file_url"])).pcm.astype(np.int32))))
        for mode, body in bodies.items()
    }
    assert bodies["loudness"]["loudness_lufs"] == pytest.approx(-14.0, abs=0.5)
    assert peaks["peak"] == round(0.98 * 32767)
    assert bodies["none"]["loudness_lufs"] < bodies["loudness"]["loudness_lufs"], "the tiny model is quiet"
    assert peaks["none"] < peaks["loudness"]


def test_same_seed_gives_identical_wav(client: TestClient) -> None:
    first = generate(client, seed=1234).json()
    second = generate(client, seed=1234).json()
    assert first["file_url"] != second["file_url"]
    assert download(client, first["file_url"]) == download(client, second["file_url"])


def test_without_seed_a_random_seed_is_returned(client: TestClient) -> None:
    body = generate(client).json()
    assert isinstance(body["seed"], int)
    assert 0 <= body["seed"] < 2**32


@pytest.mark.parametrize(
    ("options", "duration"),
    [({"temperature": 0}, 1), ({"guidance_scale": 1.0}, 1), ({"guidance_scale": 0}, 1), ({}, 30)],
)
def test_edge_parameters_generate_exact_length(client: TestClient, options: dict[str, Any], duration: int) -> None:
    response = generate(client, duration=duration, **options)
    assert response.status_code == 200
    wav = read_wav(download(client, response.json()["file_url"]))
    assert len(wav.samples) == duration * 32000


def test_greedy_decoding_ignores_the_seed(client: TestClient) -> None:
    first = generate(client, temperature=0, seed=1).json()
    second = generate(client, temperature=0, seed=2).json()
    assert download(client, first["file_url"]) == download(client, second["file_url"])


VALID_BOUNDS = [
    {"duration": 1},
    {"duration": 30},
    {"duration": 14.0},
    {"seed": 5.0},
    {"format": "mp3"},
    {"normalize": "none"},
    {"guidance_scale": 0},
    {"guidance_scale": 10},
    {"temperature": 0},
    {"temperature": 2},
    {"seed": 0},
    {"seed": 2**32 - 1},
    {"text": "x" * MAX_PROMPT_CHARS},
    {"text": "  lofi  "},
    {"takes": 1},
    {"takes": 4},
    {"takes": 2.0},
    {"duration": 300},  # the body admits any deployment's MAX_DURATION; the route checks this one's
]

INVALID_BOUNDS = [
    ({"duration": 0}, "duration"),
    ({"duration": 31}, "duration"),
    ({"duration": 2.5}, "duration"),
    ({"duration": "10"}, "duration"),
    ({"duration": 14.5}, "duration"),
    ({"duration": "14"}, "duration"),
    ({"duration": True}, "duration"),
    ({"duration": 31.0}, "duration"),
    ({"duration": 301}, "duration"),
    ({"takes": 0}, "takes"),
    ({"takes": 5}, "takes"),
    ({"takes": 1.5}, "takes"),
    ({"takes": "2"}, "takes"),
    ({"takes": None}, "takes"),
    ({"seed": 1.5}, "seed"),
    ({"format": "aac"}, "format"),
    ({"format": "WAV"}, "format"),
    ({"format": None}, "format"),
    ({"normalize": "lufs"}, "normalize"),
    ({"guidance_scale": -0.01}, "guidance_scale"),
    ({"guidance_scale": 10.01}, "guidance_scale"),
    ({"guidance_scale": True}, "guidance_scale"),
    ({"temperature": "1.0"}, "temperature"),
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"text": "x" * (MAX_PROMPT_CHARS + 1)}, "text"),
    ({"text": None}, "text"),
    ({"style": "jazz"}, "style"),
]


@pytest.mark.parametrize("override", VALID_BOUNDS)
def test_request_validation_accepts_bounds(override: dict[str, Any]) -> None:
    from handler.schemas import GenerateRequest

    GenerateRequest.model_validate({"text": PROMPT, **override})


@pytest.mark.parametrize(("override", "field"), INVALID_BOUNDS)
def test_invalid_input_is_400_naming_the_field_and_changes_nothing(
    client: TestClient, storage: Storage, override: dict[str, Any], field: str
) -> None:
    response = client.post("/generate/", json={"text": PROMPT, **override})
    assert response.status_code == 400
    body = response.json()
    assert field in {error["field"] for error in body["errors"]}
    assert field in body["detail"]
    assert storage.list_files() == []


def test_an_integral_float_duration_is_taken_as_that_many_seconds(local_client: TestClient) -> None:
    response = generate(local_client, duration=2.0)
    assert response.status_code == 200
    assert response.json()["duration"] == 2
    assert isinstance(response.json()["duration"], int)
    assert len(decode(download(local_client, response.json()["file_url"])).samples) == 2 * 32000


def test_missing_text_and_malformed_json_are_400(client: TestClient) -> None:
    missing = client.post("/generate/", json={"duration": 5})
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["field"] == "text"
    malformed = client.post("/generate/", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400


def test_prompt_is_trimmed_and_non_ascii_kept(client: TestClient) -> None:
    body = generate(client, text="  Raga au sitar, 雨の音  ").json()
    assert body["prompt"] == "Raga au sitar, 雨の音"


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=101", "limit"), ("skip=-1", "skip"), ("limit=abc", "limit")]
)
def test_list_query_bounds_are_400(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/files/?{query}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_list_is_newest_first_with_limit_and_skip(client: TestClient) -> None:
    names = [generate(client).json()["file_url"].removeprefix("/files/") for _ in range(3)]
    assert [f["filename"] for f in client.get("/files/?limit=100").json()] == names[::-1]
    assert [f["filename"] for f in client.get("/files/?limit=1&skip=1").json()] == [names[1]]
    assert client.get("/files/?skip=3").json() == []


def test_unknown_file_is_404(client: TestClient) -> None:
    response = client.get("/files/gen_20250528_134211_a1b2c3d4.wav")
    assert response.status_code == 404
    assert response.json() == {"detail": "File not found"}


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2Fx.wav",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2E%2E",
        "/files/gen_20250528_134211_a1b2c3d4.json",
        "/files/gen_20250528_134211_A1B2C3D4.wav",
        "/files/gen_20250528_134211_a1b2c3d4.wav.bak",
        "/files/x.wav",
        "/files/%00.wav",
        "/files/nothing.wav",
        "/files/0",
        "/files/gen_20250528_134211_a1b2c3d4.aac",
        "/files/gen_20251399_134211_a1b2c3d4.flac",
    ],
)
def test_odd_file_names_are_not_found_without_touching_storage(
    settings: Settings, generator: MusicgenGenerator, tmp_path: Path, path: str
) -> None:
    touched: list[str] = []

    class RecordingStorage(LocalStorage):
        def download(self, filename: str) -> Any:
            touched.append(filename)
            return super().download(filename)

        def stat(self, filename: str) -> Any:
            touched.append(filename)
            return super().stat(filename)

        def get_job(self, job_id: str) -> Any:
            touched.append(job_id)
            return super().get_job(job_id)

    (tmp_path / "x.wav").write_bytes(b"RIFF")
    client = TestClient(create_app(settings, RecordingStorage(tmp_path), generator))
    for response in (
        client.get(path, follow_redirects=False),
        client.get(f"{path}/info"),
        client.delete(path),
    ):
        assert response.status_code == 404, response.request
        assert response.json()["detail"] in {"File not found", "Not Found"}
    assert touched == []
    assert (tmp_path / "x.wav").exists()


def test_sidecar_keeps_prompt_and_parameters(
    local_client: TestClient, settings: Settings, local_storage: LocalStorage
) -> None:
    import json

    body = generate(local_client, text="雨の音 and sitar", seed=5, temperature=0.5).json()
    name = body["file_url"].removeprefix("/files/")
    sidecar = json.loads((local_storage.directory / name.replace(".wav", ".json")).read_text("utf-8"))
    assert sidecar["prompt"] == "雨の音 and sitar"
    assert sidecar["seed"] == 5
    assert sidecar["temperature"] == 0.5
    assert sidecar["duration"] == 1


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/", "/generate/", "/files/", "/files/{filename}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_health_and_listing_answer_while_a_generation_runs(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    gated = GatedGenerator(generator)
    with serve(settings, local_storage, gated) as client:
        result: dict[str, httpx2.Response] = {}
        worker = threading.Thread(target=lambda: result.update(response=generate(client)))
        worker.start()
        assert gated.started.wait(timeout=30)
        assert client.get("/").status_code == 200
        assert client.get("/files/").json() == []
        gated.gate.set()
        worker.join(timeout=60)
        assert result["response"].status_code == 200


def test_model_that_cannot_load_is_503_and_health_says_why(
    settings: Settings, local_storage: LocalStorage, tmp_path: Path
) -> None:
    broken = MusicgenGenerator(str(tmp_path / "no-such-model"))
    with serve(settings, local_storage, broken) as client:
        response = generate(client)
        assert response.status_code == 503
        assert "could not be loaded" in response.json()["detail"]
        health = client.get("/").json()
        assert health["status"] == "degraded"
        assert health["model_loaded"] is False
        assert "could not be loaded" in health["model_error"]
        assert 0 < health["model_retry_in_seconds"] <= MusicgenGenerator.LOAD_RETRY_FIRST_S
        assert "next try in" in generate(client).json()["detail"]  # not loaded again at once
        assert local_storage.list_files() == []


def test_generation_failure_is_500_without_internals_and_stores_nothing(
    settings: Settings, storage: Storage, generator: MusicgenGenerator
) -> None:
    with serve(settings, storage, FailingGenerator(generator), raise_server_exceptions=False) as client:
        response = generate(client)
    assert response.status_code == 500
    assert response.json() == {"detail": "Music generation failed"}
    assert storage.list_files() == []


def test_storage_failure_is_503_and_lists_nothing(
    settings: Settings, generator: MusicgenGenerator, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the storage directory should be")
    with serve(settings, LocalStorage(blocked), generator) as client:
        response = generate(client)
        assert response.status_code == 503
        assert response.json() == {"detail": "Storage unavailable"}


def test_unexpected_error_is_a_clean_500_that_is_logged_and_tagged(
    settings: Settings, generator: MusicgenGenerator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class BrokenStorage(LocalStorage):
        def list_files(self) -> Any:
            raise RuntimeError("secret internal detail")

    # Server exceptions are raised in the test: an error that got past the middleware would fail it.
    with serve(settings, BrokenStorage(tmp_path), generator) as client:
        response = client.get("/files/")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Internal server error"}
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]
    lines = log_lines(capsys.readouterr().out)
    [error] = [line for line in lines if line["logger"] == "handler.errors"]
    [access] = [line for line in lines if line["logger"] == "handler.access"]
    assert access["status"] == 500
    assert "secret internal detail" in error["exception"], "the error is logged with its trace"
    assert error["request_id"] == access["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("duration", [45, 75])
def test_max_duration_admits_clips_past_30_s_exactly_that_long(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator, duration: int
) -> None:
    with serve(settings.model_copy(update={"max_duration": 90}), local_storage, generator) as client:
        response = generate(client, duration=duration, seed=3)
        assert response.status_code == 200, response.text
        assert response.json()["duration"] == duration
        wav = read_wav(download(client, response.json()["file_url"]))
        assert (wav.sample_rate, len(wav.samples)) == (32000, duration * 32000)
        refused = generate(client, duration=91)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"field": "duration", "message": "Input should be less than or equal to 90 (this deployment's MAX_DURATION)"}
    ]
    assert len(local_storage.list_files()) == 1


def test_takes_are_each_stored_with_their_own_seed_and_listed(client: TestClient, storage: Storage) -> None:
    response = generate(client, duration=2, seed=40, takes=3, format="flac")
    assert response.status_code == 200
    body = response.json()
    takes = body["takes"]
    assert [take["seed"] for take in takes] == [40, 41, 42]
    # The contract's fields are the first take's.
    assert (body["file_url"], body["filename"], body["seed"]) == (
        takes[0]["file_url"],
        takes[0]["filename"],
        takes[0]["seed"],
    )
    assert len({take["filename"] for take in takes}) == 3
    assert all(is_valid_filename(take["filename"]) and take["filename"].endswith(".flac") for take in takes)
    assert all(take["file_url"] == f"/files/{take['filename']}" for take in takes)
    audio = [decode(download(client, take["file_url"])).samples for take in takes]
    assert all(len(samples) == 2 * 32000 for samples in audio)
    assert len({samples.tobytes() for samples in audio}) == 3
    listed = {entry["filename"]: entry for entry in client.get("/files/").json()}
    assert {name: entry["seed"] for name, entry in listed.items()} == {take["filename"]: take["seed"] for take in takes}
    assert {f.filename for f in storage.list_files()} == set(listed)

    again = generate(client, duration=2, seed=40, takes=3, format="flac").json()["takes"]
    assert [decode(download(client, take["file_url"])).samples.tobytes() for take in again] == [
        samples.tobytes() for samples in audio
    ]


def test_each_take_counts_against_max_files(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    with serve(settings.model_copy(update={"max_files": 3}), local_storage, generator) as client:
        older = [generate(client, seed=seed).json()["filename"] for seed in (1, 2)]
        takes = [take["filename"] for take in generate(client, seed=3, takes=2).json()["takes"]]
        assert {f.filename for f in local_storage.list_files()} == {older[1], *takes}
        refused = generate(client, takes=4)
    assert refused.status_code == 400
    assert [error["field"] for error in refused.json()["errors"]] == ["takes"]
    assert "the files this deployment keeps" in refused.json()["detail"]
    assert {f.filename for f in local_storage.list_files()} == {older[1], *takes}


def test_a_take_that_cannot_be_stored_leaves_none_of_its_request(
    settings: Settings, tmp_path: Path, generator: MusicgenGenerator
) -> None:
    storage = FailingSecondSave(tmp_path / "generated")
    with serve(settings, storage, generator) as client:
        response = generate(client, takes=2)
    assert response.status_code == 503
    assert response.json() == {"detail": "Storage unavailable"}
    assert storage.saved == 1
    assert storage.list_files() == []
