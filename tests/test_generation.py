"""The generation parameters: one type from the request body to the engine, and back to clients."""

import json
import subprocess
import sys

from fastapi.testclient import TestClient

from handler.audio.output import AudioFormat, AudioOutput, Normalization
from handler.generation import MAX_SEED, GenerationParams
from handler.schemas import GenerateRequest, request_fields
from handler.storage import LocalStorage, metadata_name
from tests.support.infra_files import ROOT


def test_a_request_body_becomes_params_and_is_repeated_under_its_own_names() -> None:
    body = {
        "text": "  rain on a tin roof ",
        "duration": 4,
        "guidance_scale": 2.5,
        "temperature": 0.5,
        "seed": 17,
        "format": "flac",
        "normalize": "peak",
    }
    request = GenerateRequest.model_validate(body)
    params = request.to_params()
    output = request.to_output()
    assert params == GenerationParams(
        prompt="rain on a tin roof", duration=4, guidance_scale=2.5, temperature=0.5, seed=17
    )
    assert output == AudioOutput(AudioFormat.FLAC, Normalization.PEAK)
    assert request_fields(params, output) == {**body, "text": "rain on a tin roof"}


def test_a_request_naming_neither_format_nor_normalisation_gets_a_loudness_normalised_wav() -> None:
    assert GenerateRequest.model_validate({"text": "rain"}).to_output() == AudioOutput(
        AudioFormat.WAV, Normalization.LOUDNESS
    )


def test_a_request_without_a_seed_gets_a_fresh_one_in_range() -> None:
    request = GenerateRequest.model_validate({"text": "rain"})
    seeds = {request.to_params().seed for _ in range(20)}
    assert len(seeds) > 1
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    assert GenerateRequest.model_validate({"text": "rain", "seed": MAX_SEED}).to_params().seed == MAX_SEED


def test_the_sidecar_keeps_the_prompt_and_parameters(local_client: TestClient, local_storage: LocalStorage) -> None:
    body = {"text": "drums", "duration": 1, "guidance_scale": 1.5, "temperature": 0.8, "seed": 5}
    filename = local_client.post("/generate/", json=body).json()["filename"]
    sidecar = json.loads((local_storage.directory / metadata_name(filename)).read_text())
    assert {key: sidecar[key] for key in ("prompt", "duration", "guidance_scale", "temperature", "seed")} == {
        "prompt": "drums",
        "duration": 1,
        "guidance_scale": 1.5,
        "temperature": 0.8,
        "seed": 5,
    }


def test_the_http_side_takes_the_parameters_without_torch() -> None:
    script = (
        "import sys\n"
        "import handler.generation, handler.schemas, handler.job_records\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
