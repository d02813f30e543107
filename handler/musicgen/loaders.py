"""Where a served model comes from: an artifact beside the model, the artifact cache, or a bake.

`load_model` takes `MODEL_ID` (a hub id or a `save_pretrained` directory) and a precision:
* an artifact baked beside the model (the image's) is loaded as it is;
* otherwise the quantized precisions look in the artifact cache, under a key made of the model's
  identity (hub revision, or the directory's files), the precision and the artifact format
  version; on a miss the model is converted part by part from its checkpoint, written to the
  cache for the next start, and served;
* fp32 and bf16 are converted from the checkpoint at every start (no artifact holds them).
"""

import fcntl
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from handler.allocator import return_freed_memory
from handler.musicgen.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    artifact_dir_name,
    is_artifact,
    load_artifact,
    save_artifact,
)
from handler.musicgen.model import MusicgenModel
from handler.musicgen.tokenizer import PromptTokenizer
from handler.settings import QUANTIZED, Precision

logger = logging.getLogger(__name__)

Origin = Literal["beside the model", "cache", "baked", "converted"]
"""Where the served model came from: the image's artifact; the cache; a bake at this start
(written to the cache); converted at this start and kept nowhere (fp32, bf16, or a cache that
can't be written)."""

CONTENT_HASH_LIMIT = 1 << 20
"""Files up to this size count in a directory's identity by content; larger ones (the weights)
by size and modification time."""
STALE_PARTIAL_SECONDS = 3600.0
"""A partial bake this old was interrupted: its directory is removed."""


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint on local disk and what identifies its contents."""

    directory: Path
    identity: str


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve, its prompt tokenizer, and where it came from."""

    model: MusicgenModel
    tokenizer: PromptTokenizer
    precision: Precision
    origin: Origin
    artifact: str | None
    """The artifact's directory name (not its path), or None when there is none."""


def load_model(model_id: str, precision: Precision, cache_dir: Path) -> LoadedModel:
    """The model `model_id` in `precision`, prepared to serve (see the module docs)."""
    return_freed_memory()
    beside = Path(model_id) / artifact_dir_name(precision)
    if precision in QUANTIZED and is_artifact(beside):
        return _serve(beside, "beside the model")
    source = resolve_source(model_id)
    if precision not in QUANTIZED:
        model, tokenizer = convert(source, precision)
        model.prepare_to_serve()
        return LoadedModel(model, tokenizer, precision, "converted", None)
    entry = cache_entry(cache_dir, model_id, source, precision)
    with _bake_lock(entry):
        if is_artifact(entry):
            try:
                return _serve(entry, "cache")
            except ArtifactError:
                logger.warning("cached artifact unreadable; baking it again", extra={"artifact": entry.name})
                shutil.rmtree(entry, ignore_errors=True)
        started = time.perf_counter()
        model, tokenizer = convert(source, precision)
        _remove_stale_partials(entry.parent)
        try:
            save_artifact(model, tokenizer, entry, {"model_id": model_id, "identity": source.identity})
            logger.info(
                "artifact baked",
                extra={"artifact": entry.name, "seconds": round(time.perf_counter() - started, 1)},
            )
        except OSError:
            logger.warning("artifact cache not writable; serving without caching", extra={"cache": str(cache_dir)})
            model.prepare_to_serve()
            return LoadedModel(model, tokenizer, precision, "converted", None)
    model.prepare_to_serve()
    return LoadedModel(model, tokenizer, precision, "baked", entry.name)


def _serve(directory: Path, origin: Origin) -> LoadedModel:
    artifact = load_artifact(directory)
    artifact.model.prepare_to_serve()
    return LoadedModel(artifact.model, artifact.tokenizer, artifact.model.precision, origin, directory.name)


def resolve_source(model_id: str) -> ModelSource:
    """The checkpoint `model_id` names: a local directory, or the hub's files (downloaded once,
    into the hub's own cache) at the revision the hub serves."""
    path = Path(model_id)
    if path.is_dir():
        return ModelSource(path, f"directory:{directory_fingerprint(path)}")
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    return ModelSource(snapshot, f"hub:{model_id}@{snapshot.name}")


def directory_fingerprint(directory: Path) -> str:
    """A digest of a checkpoint directory's files: small ones (configs, tokenizer) by content,
    large ones (weights) by size and modification time, so it costs no read of the weights."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(path.name.encode() + b"\0")
        if stat.st_size <= CONTENT_HASH_LIMIT:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_entry(cache_dir: Path, model_id: str, source: ModelSource, precision: Precision) -> Path:
    """The cache directory for `source` in `precision` at this artifact format version."""
    key = json.dumps({"identity": source.identity, "precision": precision, "format_version": FORMAT_VERSION})
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_id.rstrip("/")).name or "model").strip(".-") or "model"
    return cache_dir / f"{name}-{precision}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def convert(source: ModelSource, precision: Precision) -> tuple[MusicgenModel, PromptTokenizer]:
    """The model converted from its checkpoint (part by part from safetensors; whole through
    transformers where the weights are in another form), and its prompt tokenizer."""
    from transformers import AutoProcessor

    from handler.musicgen.checkpoint import CheckpointError, convert_checkpoint

    processor: Any = AutoProcessor.from_pretrained(source.directory)  # type: ignore[no-untyped-call]
    tokenizer = PromptTokenizer.from_processor(processor)
    try:
        return convert_checkpoint(source.directory, precision), tokenizer
    except CheckpointError as exc:
        logger.warning("checkpoint not readable part by part (%s); loading it whole", exc)
    from transformers import MusicgenForConditionalGeneration

    whole = MusicgenForConditionalGeneration.from_pretrained(source.directory)
    return MusicgenModel.from_transformers(whole, precision), tokenizer


@contextmanager
def _bake_lock(entry: Path) -> Iterator[None]:
    """Held while a process checks for and bakes `entry`: a second process starting meanwhile
    waits, then loads what the first wrote. Without a writable cache, no lock is taken."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle = (entry.parent / f".{entry.name}.lock").open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_partials(cache_dir: Path) -> None:
    cutoff = time.time() - STALE_PARTIAL_SECONDS
    for partial in cache_dir.glob(".*.partial-*"):
        try:
            if partial.is_dir() and partial.stat().st_mtime < cutoff:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            continue
