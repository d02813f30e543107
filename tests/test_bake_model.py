"""infra/bake_model.py: what the image bakes loads offline and generates exactly what its source does."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.musicgen.generator import GenerationParams, ModelUnavailableError, TransformersMusicGenerator
from handler.musicgen.model import artifact_name
from handler.settings import QUANTIZED, Precision
from infra.bake_model import bake, main

ROOT = Path(__file__).resolve().parent.parent


def test_baked_model_generates_what_its_source_does(
    tiny_model_dir: Path, generator: TransformersMusicGenerator, tmp_path: Path
) -> None:
    target = tmp_path / "opt" / "model"
    bake(str(tiny_model_dir), target)
    assert list(target.glob("*.safetensors"))
    assert not list(target.glob("*.bin"))
    assert {path.name for path in target.glob("fast-musicgen-*.pt")} == {artifact_name(p) for p in QUANTIZED}
    params = GenerationParams(prompt="rain on a tin roof", duration=1, guidance_scale=3.0, temperature=1.0, seed=7)
    baked = TransformersMusicGenerator(str(target))
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
    from_source = TransformersMusicGenerator(str(tiny_model_dir), precision=precision).generate(params)
    np.testing.assert_array_equal(
        TransformersMusicGenerator(str(target), precision=precision).generate(params), from_source
    )
    fp32 = TransformersMusicGenerator(str(target), precision="fp32")
    with pytest.raises(ModelUnavailableError):
        fp32.load()


def test_usage_error_without_both_arguments() -> None:
    assert main(["bake_model.py", "facebook/musicgen-small"]) == 2


def test_every_baked_file_is_readable_by_other_users(tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    bake(str(tiny_model_dir), target)
    assert {path.stat().st_mode & 0o777 for path in target.iterdir()} == {0o644}


def test_serving_the_baked_model_never_imports_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    bake(str(tiny_model_dir), target)
    script = (
        "import sys\n"
        "from handler.app import app\n"
        "from handler.musicgen.generator import GenerationParams, TransformersMusicGenerator\n"
        f"generator = TransformersMusicGenerator({str(target)!r})\n"
        "audio = generator.generate(GenerationParams('rain', 1, 3.0, 1.0, seed=3))\n"
        "assert audio.shape == (32000,), audio.shape\n"
        "assert 'transformers' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
