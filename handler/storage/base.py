"""The interface every storage backend implements, the types it speaks in, and the file cap."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from handler.filenames import job_id_for
from handler.observability.metrics import record_storage_error

JOBS_FOLDER = "jobs"
"""Job records live in this folder of the storage, beside the generated files."""


class StorageError(RuntimeError):
    """The storage backend failed; nothing half-written is left listed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # Counted where it is raised, so every failed operation counts once, whoever handles it.
        record_storage_error()


@dataclass(frozen=True)
class StoredFile:
    """A generated file as listed."""

    filename: str
    size_bytes: int
    created_at: datetime
    saved_at: datetime
    """When the storage wrote it, by the storage's own clock (S3's LastModified: whole seconds)."""


@dataclass(frozen=True)
class LocalFile:
    """A download served from the local filesystem."""

    path: Path


@dataclass(frozen=True)
class RemoteFile:
    """A download served by redirecting to a presigned URL."""

    url: str


Download = LocalFile | RemoteFile


class Storage(Protocol):
    """The small interface every backend implements."""

    @property
    def backend(self) -> str:
        """The backend's name, as GET / reports it."""
        ...

    @property
    def download_origin(self) -> str | None:
        """The origin (scheme://host[:port]) downloads are redirected to; None when the app serves them."""
        ...

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        """Store a file and its JSON sidecar; on failure neither is listed."""
        ...

    def list_files(self) -> list[StoredFile]:
        """Every generated file, newest first."""
        ...

    def stat(self, filename: str) -> StoredFile | None:
        """One generated file as listed, or None if there is no such file."""
        ...

    def read_metadata(self, filenames: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sidecars of `filenames`, by file name; files without a readable sidecar are left out."""
        ...

    def remove_leftovers(self) -> None:
        """Remove what writers killed mid-write left behind (never a live writer's work)."""
        ...

    def download(self, filename: str) -> Download | None:
        """Where a client downloads `filename` from, or None if there is no such file."""
        ...

    def delete(self, filenames: Sequence[str]) -> None:
        """Delete files and their sidecars; missing ones are skipped."""
        ...

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None:
        """Write a job record, replacing any before it."""
        ...

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """A job record, or None if there is none."""
        ...

    def list_jobs(self) -> list[str]:
        """The ids of every job record."""
        ...

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete job records."""
        ...


def metadata_name(filename: str) -> str:
    """The sidecar that keeps a file's prompt, parameters and loudness: its name with `.json` for the extension."""
    return job_id_for(filename) + ".json"


def decode_json(data: bytes) -> dict[str, Any] | None:
    """A stored sidecar or job record, or None if it is not a JSON object."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def job_record_name(job_id: str) -> str:
    """Where a job's record lives, relative to the storage's root."""
    return f"{JOBS_FOLDER}/{job_id}.json"


def encode_json(record: Mapping[str, Any]) -> bytes:
    """A sidecar or job record as stored: UTF-8 JSON, non-ASCII text kept readable."""
    return json.dumps(record, ensure_ascii=False).encode()


def newest_first(files: list[StoredFile]) -> list[StoredFile]:
    """Files ordered newest first; generated names sort in creation order."""
    return sorted(files, key=lambda f: f.filename, reverse=True)


def prune(storage: Storage, keep: int) -> list[str]:
    """Delete all but the `keep` files saved last, in one batch; returns the names deleted.

    Ranked by when the storage saved them, then by name: one order every instance sees alike
    (names are given when requests arrive, and a long request saves after shorter ones that
    arrived later). So instances pruning one bucket at once, each from its own listing, never
    delete one of the `keep` saved last between them, and whichever lists last leaves exactly
    `keep`. A file just saved is among them unless `keep` others were saved in the same second
    (S3's clock) with names after its own. Job records are pruned by their store
    (`handler.job_records.JobStore.prune`), which knows which jobs have ended.
    """
    saved_last_first = sorted(storage.list_files(), key=lambda f: (f.saved_at, f.filename), reverse=True)
    excess = [f.filename for f in saved_last_first[keep:]]
    if excess:
        storage.delete(excess)
    return excess
