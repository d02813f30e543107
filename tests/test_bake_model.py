"""infra/bake_model.py: what the image bakes loads offline and generates exactly what its source does."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.generation import GenerationParams
from handler.musicgen.artifact import artifact_dir_name, is_artifact
from handler.musicgen.generator import ModelUnavailableError, MusicgenGenerator
from handler.settings import QUANTIZED, Precision
from infra.bake_model import bake, main

ROOT = Path(__file__).resolve().parents[1]


def test_baked_model_generates_what_its_source_does(
    tiny_model_dir: Path, generator: MusicgenGenerator, tmp_path: Path
) -> None:
    target = tmp_path / "opt" / "model"
    bake(str(tiny_model_dir), target)
    assert list(target.glob("*.safetensors"))
    assert not list(target.glob("*.bin"))
    assert not list(target.rglob("*.pt"))
    assert all(is_artifact(target / artifact_dir_name(precision)) for precision in QUANTIZED)
    params = GenerationParams(prompt="rain on a tin roof", duration=1, guidance_scale=3.0, temperature=1.0, seed=7)
    baked = MusicgenGenerator(str(target))
    np.testing.assert_array_equal(baked.generate(params), generator.generate(params))


@pytest.mark.parametrize("precision", sorted(QUANTIZED))
def test_quantized_serving_loads_the_artifact_not_the_fp32_weights(
    tiny_model_dir: Path, tmp_path: Path, precision: Precision
) -> None:
    target = tmp_path / "model"
    bake(str(tiny_model_dir), target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    params = GenerationParams(prompt="rain", duration=1, guidance_scale=3.0, temperature=1.0, seed=3)
    from_source = MusicgenGenerator(str(tiny_model_dir), precision=precision).generate(params)
    np.testing.assert_array_equal(MusicgenGenerator(str(target), precision=precision).generate(params), from_source)
    fp32 = MusicgenGenerator(str(target), precision="fp32")
    with pytest.raises(ModelUnavailableError):
        fp32.load()


def test_usage_error_without_both_arguments() -> None:
    assert main(["bake_model.py", "facebook/musicgen-small"]) == 2


def test_every_baked_file_is_readable_by_other_users(tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    bake(str(tiny_model_dir), target)
    paths = list(target.rglob("*"))
    assert {path.stat().st_mode & 0o777 for path in paths if path.is_file()} == {0o644}
    assert {path.stat().st_mode & 0o777 for path in paths if path.is_dir()} == {0o755}


def test_serving_the_baked_model_never_imports_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    bake(str(tiny_model_dir), target)
    script = (
        "import sys\n"
        "from handler.app import app\n"
        "from handler.generation import GenerationParams\n"
        "from handler.musicgen.generator import MusicgenGenerator\n"
        f"generator = MusicgenGenerator({str(target)!r})\n"
        "audio = generator.generate(GenerationParams('rain', 1, 3.0, 1.0, seed=3))\n"
        "assert audio.shape == (1, 32000), audio.shape\n"
        "assert 'transformers' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
