"""A transformers MusicGen checkpoint (`save_pretrained` directory) read one part at a time.

`convert_checkpoint` builds the model's modules without their weights (on the meta device) and
loads each part's tensors from the safetensors files just before it is converted, so the fp32
model and its converted copy never sit in memory together.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from handler.musicgen.model import MusicgenModel
from handler.settings import Precision

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

ALIASES = {"text_encoder.encoder.embed_tokens.weight": "text_encoder.shared.weight"}
"""Tensors a checkpoint may leave out because they are tied to another."""
LEGACY_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
"""Weight-norm tensors under the names older transformers saved them with (torch's old weight_norm)."""


class CheckpointError(ValueError):
    """The directory holds no safetensors weights this reader understands."""


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, or the shards its index names."""
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    if (directory / INDEX_FILE).is_file():
        weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")


class CheckpointTensors:
    """The tensors of a checkpoint's safetensors files, each read when asked for (and copied out
    of the file's memory map, so what was read is not kept resident)."""

    def __init__(self, directory: Path) -> None:
        self._files: dict[str, Path] = {}
        for path in weight_files(directory):
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle is no mapping)
                    self._files[name] = path

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, under its own name, a tied one's or its legacy name."""
        for candidate in (name, ALIASES.get(name), _legacy_name(name)):
            if candidate is not None and candidate in self._files:
                with safe_open(str(self._files[candidate]), framework="pt") as handle:
                    tensor: torch.Tensor = handle.get_tensor(candidate)
                    return tensor
        raise CheckpointError(f"the checkpoint has no tensor {name!r}")

    def load_into(self, model: nn.Module, part: str) -> None:
        """Give the part of `model` named `part` its weights (its non-persistent buffers, which no
        checkpoint holds, are computed by the modules that own them)."""
        module = model.get_submodule(part)
        names = module.state_dict(keep_vars=True)
        state = {name: self.read(f"{part}.{name}") for name in names}
        module.load_state_dict(state, strict=True, assign=True)
        module.requires_grad_(False)
        positions: Any = module
        if part.endswith("embed_positions"):
            positions.weights = positions.get_embedding(positions.num_positions, positions.embedding_dim)


def _legacy_name(name: str) -> str | None:
    for current, legacy in LEGACY_WEIGHT_NORM.items():
        if name.endswith(current):
            return name.removesuffix(current) + legacy
    return None


def convert_checkpoint(directory: Path, precision: Precision) -> MusicgenModel:
    """The model of a `save_pretrained` directory in `precision`, read part by part.

    Raises CheckpointError when the weights are not safetensors or lack a tensor the model has.
    """
    from transformers import GenerationConfig, MusicgenConfig, MusicgenForConditionalGeneration

    tensors = CheckpointTensors(directory)
    config: Any = MusicgenConfig.from_pretrained(directory)
    with torch.device("meta"):
        model: Any = MusicgenForConditionalGeneration(config)
    try:
        model.generation_config = GenerationConfig.from_pretrained(directory)
    except OSError:
        logger.info("no generation_config.json; using the model config's defaults")
    converted = MusicgenModel.from_transformers(
        model, precision, materialize=lambda part: tensors.load_into(model, part)
    )
    if any(tensor.is_meta for tensor in converted.tensors()):
        raise CheckpointError("a converted part still lacks weights")
    return converted
