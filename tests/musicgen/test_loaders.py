"""Where the served model comes from: the image's artifact, the cache, or a bake at first start."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.generation import GenerationParams
from handler.musicgen.artifact import MANIFEST_NAME, artifact_dir_name, is_artifact, save_artifact
from handler.musicgen.generator import MusicgenGenerator
from handler.musicgen.loaders import cache_entry, load_model, resolve_source
from tests.support.models import converted, prompt_tokenizer, sampled_codes

ROOT = Path(__file__).resolve().parents[2]
PARAMS = GenerationParams(prompt="rain on a tin roof", duration=1, guidance_scale=3.0, temperature=1.0, seed=11)


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model's directory that a test may change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-musicgen"))


def test_the_first_start_bakes_into_the_cache_and_later_starts_load_it(model_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_model(str(model_copy), "int8", cache)
    assert first.origin == "baked"
    (entry,) = [path for path in cache.iterdir() if not path.name.startswith(".")]
    assert entry.name == first.artifact
    assert is_artifact(entry)
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    assert manifest["source"]["identity"] == resolve_source(str(model_copy)).identity
    later = load_model(str(model_copy), "int8", cache)
    assert (later.origin, later.artifact) == ("cache", first.artifact)
    tokenizer = prompt_tokenizer(model_copy)
    assert torch.equal(sampled_codes(first.model, tokenizer), sampled_codes(later.model, later.tokenizer))


def test_baked_and_cached_starts_give_the_audio_of_the_image_artifact(model_copy: Path, tmp_path: Path) -> None:
    image = tmp_path / "image-model"
    shutil.copytree(model_copy, image)
    assert save_artifact(converted(image, "int4"), prompt_tokenizer(image), image / artifact_dir_name("int4"))
    from_image = MusicgenGenerator(str(image), "int4", cache_dir=tmp_path / "unused")
    baked = MusicgenGenerator(str(model_copy), "int4", cache_dir=tmp_path / "cache")
    cached = MusicgenGenerator(str(model_copy), "int4", cache_dir=tmp_path / "cache")
    audio = from_image.generate(PARAMS)
    np.testing.assert_array_equal(baked.generate(PARAMS), audio)
    np.testing.assert_array_equal(cached.generate(PARAMS), audio)
    origins = [(g.artifact.origin if g.artifact else None) for g in (from_image, baked, cached)]
    assert origins == ["beside the model", "baked", "cache"]
    assert not (tmp_path / "unused").exists()


def test_the_cache_key_follows_the_model_the_precision_and_the_format(model_copy: Path, tmp_path: Path) -> None:
    source = resolve_source(str(model_copy))
    entry = cache_entry(tmp_path, str(model_copy), source, "int8")
    assert entry == cache_entry(tmp_path, str(model_copy), resolve_source(str(model_copy)), "int8")
    assert entry != cache_entry(tmp_path, str(model_copy), source, "int4")
    config = model_copy / "config.json"
    config.write_text(config.read_text().replace('"top_k"', '"top_k" ') + "\n")
    assert cache_entry(tmp_path, str(model_copy), resolve_source(str(model_copy)), "int8") != entry
    (weights,) = model_copy.glob("*.safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    changed = resolve_source(str(model_copy))
    assert changed.identity != source.identity


def test_a_partial_bake_is_never_used_and_a_stale_one_is_removed(model_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry = cache_entry(cache, str(model_copy), resolve_source(str(model_copy)), "int8")
    partial = cache / f".{entry.name}.partial-interrupted"
    partial.mkdir(parents=True)
    (partial / MANIFEST_NAME).write_text("{")
    os.utime(partial, (0, 0))
    loaded = load_model(str(model_copy), "int8", cache)
    assert loaded.origin == "baked"
    assert is_artifact(entry)
    assert not partial.exists()


def test_an_unreadable_cached_artifact_is_baked_again(model_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_model(str(model_copy), "int8", cache)
    (cache / str(first.artifact) / MANIFEST_NAME).write_text("not json")
    again = load_model(str(model_copy), "int8", cache)
    assert again.origin == "baked"
    assert load_model(str(model_copy), "int8", cache).origin == "cache"


def test_without_a_writable_cache_the_bake_is_served_and_not_kept(model_copy: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    loaded = load_model(str(model_copy), "int8", blocked / "cache")
    assert (loaded.origin, loaded.artifact) == ("converted", None)
    assert blocked.is_file()


def test_fp32_is_converted_at_every_start_and_never_cached(model_copy: Path, tmp_path: Path) -> None:
    loaded = load_model(str(model_copy), "fp32", tmp_path / "cache")
    assert (loaded.origin, loaded.artifact) == ("converted", None)
    assert not (tmp_path / "cache").exists()


def test_two_processes_starting_at_once_bake_once_and_serve_the_same_model(model_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = (
        "import sys, hashlib\n"
        "from pathlib import Path\n"
        "from handler.generation import GenerationParams\n"
        "from handler.musicgen.generator import MusicgenGenerator\n"
        "g = MusicgenGenerator(sys.argv[1], 'int8', cache_dir=Path(sys.argv[2]))\n"
        "audio = g.generate(GenerationParams('rain', 1, 3.0, 1.0, seed=4))\n"
        "print(g.artifact.origin, hashlib.sha256(audio.tobytes()).hexdigest())\n"
    )
    command = [sys.executable, "-c", script, str(model_copy), str(cache)]
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in results]
    outputs = [out.split()[-2:] for out, _ in results]
    assert sorted(origin for origin, _ in outputs) == ["baked", "cache"]
    assert outputs[0][1] == outputs[1][1]
    entries = [path for path in cache.iterdir() if not path.name.startswith(".")]
    assert len(entries) == 1
    assert is_artifact(entries[0])
    assert not list(cache.glob(".*partial*"))


def test_a_hub_id_is_read_from_the_hub_cache_at_its_revision(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repository = tmp_path / "hub" / "models--srocks--tiny-musicgen"
    shutil.copytree(tiny_model_dir, repository / "snapshots" / revision)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_source("srocks/tiny-musicgen")
    assert source.identity == f"hub:srocks/tiny-musicgen@{revision}"
    loaded = load_model("srocks/tiny-musicgen", "int8", tmp_path / "cache")
    assert loaded.origin == "baked"
    assert str(loaded.artifact).startswith("tiny-musicgen-int8-")
