"""The serving artifact: a converted model as safetensors plus a small JSON, loaded without pickle.

A directory holds `model.json` (format version, precision, the config values the engine needs,
where the model came from, and each module as a `module_tree` description), `weights.safetensors`
(every tensor) and `prompt-tokenizer.json`. Nothing in it is code: a tampered directory fails to
load, it cannot run anything. Directories are written whole or not at all (a temporary directory,
renamed into place), so an interrupted write is never read.
"""

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from handler.musicgen import module_tree
from handler.musicgen.audio_decoder import EncodecAudioDecoder
from handler.musicgen.config import ModelConfig
from handler.musicgen.decoder_layer import DecoderLayer
from handler.musicgen.model import MusicgenModel
from handler.musicgen.text_encoder import T5TextEncoder
from handler.musicgen.tokenizer import TOKENIZER_NAME, PromptTokenizer
from handler.settings import Precision

logger = logging.getLogger(__name__)

FORMAT = "srocks-music-artifact"
FORMAT_VERSION = 1
"""Raised whenever what an artifact holds or means changes: older artifacts are then not read."""
MANIFEST_NAME = "model.json"
WEIGHTS_NAME = "weights.safetensors"


class ArtifactError(ValueError):
    """A directory is not an artifact this code reads; the message says why."""


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: the model, its prompt tokenizer and what its manifest says."""

    model: MusicgenModel
    tokenizer: PromptTokenizer
    manifest: dict[str, Any]


def artifact_dir_name(precision: Precision) -> str:
    """The artifact's directory beside a saved model (as the image bakes it)."""
    return f"artifact-{precision}"


def is_artifact(directory: Path) -> bool:
    """Whether `directory` holds a complete artifact (it may still be of another format version)."""
    return all((directory / name).is_file() for name in (MANIFEST_NAME, WEIGHTS_NAME, TOKENIZER_NAME))


def save_artifact(
    model: MusicgenModel, tokenizer: PromptTokenizer, directory: Path, source: dict[str, str] | None = None
) -> bool:
    """Write `model` as an artifact at `directory`, whole or not at all. Returns False, writing
    nothing, when `directory` already exists (another process got there first)."""
    if model.audio_decoder.prepared_to_serve:
        # Baked on one machine, served on others: serving fits the model to the CPU it runs on.
        raise ValueError("a model prepared to serve cannot be saved")
    tensors: dict[str, torch.Tensor] = {"embed": model.embed, "positions": model.positions}
    modules = {
        name: None if part is None else module_tree.describe(part, f"{name}.", tensors)
        for name, part in model.parts().items()
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "precision": model.precision,
        "config": model.config.to_json(),
        "source": source or {},
        "modules": modules,
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.partial-"))
    try:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(scratch / WEIGHTS_NAME))
        tokenizer.save(scratch / TOKENIZER_NAME)
        (scratch / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        for path in (scratch, *scratch.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # Lambda runs the image as another user
        try:
            os.rename(scratch, directory)
        except OSError:
            if is_artifact(directory):
                return False
            raise
        return True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The artifact's manifest, checked to be this format and version. Raises ArtifactError."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{directory / MANIFEST_NAME} is not an artifact manifest ({type(exc).__name__})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory} is not a {FORMAT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} is artifact format version {manifest.get('format_version')}; this code reads {FORMAT_VERSION}"
        )
    return manifest


def load_artifact(directory: Path, native: bool = True) -> Artifact:
    """The artifact at `directory`, not yet prepared to serve. Raises ArtifactError."""
    manifest = read_manifest(directory)
    try:
        config = ModelConfig.from_json(manifest.get("config"))
        with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        modules = manifest.get("modules")
        if not isinstance(modules, dict):
            raise ArtifactError("the manifest describes no modules")
        parts = {name: None if spec is None else module_tree.rebuild(spec, tensors) for name, spec in modules.items()}
        model = MusicgenModel(
            config,
            embed=tensors["embed"],
            positions=tensors["positions"],
            layers=[_checked(layer, DecoderLayer) for layer in _checked(parts["layers"], nn.ModuleList)],
            final_norm=_checked(parts["final_norm"], nn.Module),
            lm_head=_checked(parts["lm_head"], nn.Module),
            text_encoder=_checked(parts["text_encoder"], T5TextEncoder),
            text_projection=parts["text_projection"],
            audio_decoder=_checked(parts["audio_decoder"], EncodecAudioDecoder),
            native=native,
        )
        tokenizer = PromptTokenizer.from_file(directory / TOKENIZER_NAME)
    except ArtifactError:
        raise
    except Exception as exc:  # tokenizers and safetensors raise plain Exceptions for malformed files
        raise ArtifactError(f"{directory} could not be read as an artifact ({type(exc).__name__}: {exc})") from exc
    return Artifact(model, tokenizer, manifest)


_Module = TypeVar("_Module", bound=nn.Module)


def _checked(value: Any, cls: type[_Module]) -> _Module:
    if not isinstance(value, cls):
        raise ArtifactError(f"the artifact's {type(value).__name__} is not a {cls.__name__}")
    return value
