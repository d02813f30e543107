"""infra/bake_model.py: what the image bakes loads offline and generates exactly what its source does."""

from pathlib import Path

import numpy as np

from handler.engine import GenerationParams, TransformersMusicGenerator
from infra.bake_model import bake, main


def test_baked_model_generates_what_its_source_does(
    tiny_model_dir: Path, generator: TransformersMusicGenerator, tmp_path: Path
) -> None:
    target = tmp_path / "opt" / "model"
    bake(str(tiny_model_dir), target)
    assert list(target.glob("*.safetensors"))
    assert not list(target.glob("*.bin"))  # no pickled weights
    params = GenerationParams(prompt="rain on a tin roof", duration=1, guidance_scale=3.0, temperature=1.0, seed=7)
    baked = TransformersMusicGenerator(str(target))
    np.testing.assert_array_equal(baked.generate(params), generator.generate(params))


def test_usage_error_without_both_arguments() -> None:
    assert main(["bake_model.py", "facebook/musicgen-small"]) == 2
