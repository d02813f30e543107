"""The serving artifact: safetensors and JSON, the same model back, nothing in it runs."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handler.musicgen.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ArtifactError,
    artifact_dir_name,
    load_artifact,
    save_artifact,
)
from handler.musicgen.generator import ModelUnavailableError, MusicgenGenerator
from handler.musicgen.tokenizer import TOKENIZER_NAME
from handler.settings import QUANTIZED, Precision
from tests.support.models import code_running_pickle, converted, prompt_tokenizer, sampled_codes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=sorted(QUANTIZED))
def saved(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted to each quantized precision and saved as an artifact."""
    directory = tmp_path_factory.mktemp("artifact") / artifact_dir_name(request.param)
    assert save_artifact(converted(tiny_model_dir, request.param), prompt_tokenizer(tiny_model_dir), directory)
    return directory


def test_an_artifact_is_safetensors_json_and_the_tokenizer(saved: Path) -> None:
    assert sorted(path.name for path in saved.iterdir()) == sorted([MANIFEST_NAME, WEIGHTS_NAME, TOKENIZER_NAME])
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["precision"] == saved.name.removeprefix("artifact-")
    assert manifest["config"]["hidden_size"] == 16
    assert not list(saved.parent.glob(".*partial*"))


def test_a_loaded_artifact_samples_what_the_model_it_was_saved_from_does(saved: Path, tiny_model_dir: Path) -> None:
    precision: Precision = json.loads((saved / MANIFEST_NAME).read_text())["precision"]
    reference = converted(tiny_model_dir, precision)
    tokenizer = prompt_tokenizer(tiny_model_dir)
    artifact = load_artifact(saved)
    assert artifact.model.precision == precision
    expected = sampled_codes(reference, tokenizer)
    assert torch.equal(sampled_codes(artifact.model, artifact.tokenizer), expected)
    reference.prepare_to_serve()
    artifact.model.prepare_to_serve()
    codes = sampled_codes(artifact.model, artifact.tokenizer)
    assert torch.equal(codes, sampled_codes(reference, tokenizer))
    assert torch.equal(artifact.model.decode_audio(codes), reference.decode_audio(codes))


def test_saving_over_an_existing_artifact_writes_nothing(saved: Path, tiny_model_dir: Path) -> None:
    before = (saved / WEIGHTS_NAME).stat().st_mtime_ns
    model = converted(tiny_model_dir, "int8")
    assert not save_artifact(model, prompt_tokenizer(tiny_model_dir), saved)
    assert (saved / WEIGHTS_NAME).stat().st_mtime_ns == before
    assert not list(saved.parent.glob(".*partial*"))


def test_a_failed_save_leaves_no_directory_behind(tiny_model_dir: Path, tmp_path: Path) -> None:
    class BrokenTokenizer:
        def save(self, path: Path) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_artifact(converted(tiny_model_dir, "int8"), BrokenTokenizer(), tmp_path / "artifact")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_model_prepared_to_serve_is_never_saved(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = converted(tiny_model_dir, "int8")
    model.prepare_to_serve()
    with pytest.raises(ValueError, match="prepared to serve"):
        save_artifact(model, prompt_tokenizer(tiny_model_dir), tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []


def _copy(saved: Path, target: Path) -> Path:
    target.mkdir()
    for path in saved.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("replaced", [WEIGHTS_NAME, MANIFEST_NAME, TOKENIZER_NAME])
def test_a_pickle_named_like_an_artifact_file_is_refused_not_run(saved: Path, tmp_path: Path, replaced: str) -> None:
    marker = tmp_path / "pickle-ran"
    tampered = _copy(saved, tmp_path / "tampered")
    (tampered / replaced).write_bytes(code_running_pickle(marker))
    with pytest.raises(ArtifactError):
        load_artifact(tampered)
    assert not marker.exists()
    pickle.loads((tampered / replaced).read_bytes())  # the file does run code when unpickled
    assert marker.exists()


@pytest.mark.parametrize(
    "class_name", ["os.system", "subprocess.Popen", "builtins.eval", "MusicgenModel", "Module", "Parameter"]
)
def test_a_manifest_naming_another_class_is_refused(saved: Path, tmp_path: Path, class_name: str) -> None:
    tampered = _copy(saved, tmp_path / "tampered")
    manifest = json.loads((tampered / MANIFEST_NAME).read_text())
    manifest["modules"]["final_norm"]["type"] = class_name
    (tampered / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not one an artifact may hold"):
        load_artifact(tampered)


def test_an_attribute_that_is_not_plain_data_is_refused(saved: Path, tmp_path: Path) -> None:
    tampered = _copy(saved, tmp_path / "tampered")
    manifest = json.loads((tampered / MANIFEST_NAME).read_text())
    manifest["modules"]["audio_decoder"]["attributes"]["hop_length"] = {"callable": "os.system"}
    (tampered / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not one an artifact may hold"):
        load_artifact(tampered)


def test_another_format_version_is_not_read(saved: Path, tmp_path: Path) -> None:
    tampered = _copy(saved, tmp_path / "older")
    manifest = json.loads((tampered / MANIFEST_NAME).read_text())
    manifest["format_version"] = FORMAT_VERSION - 1
    (tampered / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version"):
        load_artifact(tampered)


def test_a_missing_tensor_is_refused(saved: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tampered = _copy(saved, tmp_path / "missing")
    tensors = load_file(str(tampered / WEIGHTS_NAME))
    del tensors[next(name for name in tensors if name.startswith("layers."))]
    save_file(tensors, str(tampered / WEIGHTS_NAME))
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tampered)


def test_an_old_pickled_artifact_beside_a_model_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("fast-musicgen-int8.pt", "fast-musicgen-int4.pt", "pytorch_model.bin"):
        (model_dir / name).write_bytes(code_running_pickle(marker))
    generator = MusicgenGenerator(str(model_dir), "int8", cache_dir=tmp_path / "cache")
    with pytest.raises(ModelUnavailableError):
        generator.load()
    assert not marker.exists()


def test_loading_an_artifact_imports_neither_transformers_nor_torch_compiler(saved: Path) -> None:
    # Either import costs seconds of every cold start (torch._dynamo came with random initialisation
    # of meta-device embeddings).
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from handler.musicgen.artifact import load_artifact\n"
        f"load_artifact(Path({str(saved)!r})).model.prepare_to_serve()\n"
        "print(sorted(name for name in ('transformers', 'torch._dynamo') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
