"""The catalogue of generated files: each file with what its sidecar knows, filtered, paged, and deleted."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from handler.audio.output import AudioFormat
from handler.filenames import format_of, job_id_for
from handler.job_records import JobStore
from handler.schemas import FileInfo
from handler.storage import Storage, StoredFile

SIDECAR_FIELDS = ("prompt", "seed", "guidance_scale", "temperature", "normalize", "loudness_lufs")
"""Sidecar keys a catalogue entry repeats under the same name."""


class FileBusyError(RuntimeError):
    """The file's job is still queued or running, so the file can't be deleted yet."""


def file_url(filename: str) -> str:
    """The API path a generated file is downloaded from."""
    return f"/files/{filename}"


def list_entries(
    storage: Storage,
    limit: int,
    skip: int = 0,
    audio_format: AudioFormat | None = None,
    prompt_contains: str | None = None,
) -> list[FileInfo]:
    """Files newest first, of one format and whose prompt contains a text (case-insensitively) when asked.

    Sidecars are read for the page returned only, unless the prompt filter needs them all.
    """
    files = storage.list_files()
    if audio_format is not None:
        files = [f for f in files if format_of(f.filename) is audio_format]
    if prompt_contains is None:
        page = files[skip : skip + limit]
        sidecars = storage.read_metadata([f.filename for f in page])
    else:
        sidecars = storage.read_metadata([f.filename for f in files])
        needle = prompt_contains.casefold()
        matching = [f for f in files if needle in str(sidecars.get(f.filename, {}).get("prompt") or "").casefold()]
        page = matching[skip : skip + limit]
    return [entry(f, sidecars.get(f.filename)) for f in page]


def file_entry(storage: Storage, filename: str) -> FileInfo | None:
    """One file's entry, or None if there is no such file."""
    stored = storage.stat(filename)
    if stored is None:
        return None
    return entry(stored, storage.read_metadata([filename]).get(filename))


def entry(stored: StoredFile, sidecar: Mapping[str, Any] | None) -> FileInfo:
    """A file's catalogue entry; what a missing or malformed sidecar would have said is null."""
    audio_format = format_of(stored.filename)
    known: dict[str, Any] = {
        "filename": stored.filename,
        "url": file_url(stored.filename),
        "created_at": stored.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "size_kb": round(stored.size_bytes / 1024, 1),
        "format": audio_format,
        "content_type": audio_format.media_type,
    }
    if not sidecar:
        return FileInfo.model_validate(known)
    provenance = {name: sidecar.get(name) for name in SIDECAR_FIELDS}
    # Sidecars written before `seconds` was kept hold the requested `duration`, which it always was.
    provenance["duration"] = sidecar.get("seconds", sidecar.get("duration"))
    try:
        return FileInfo.model_validate(known | provenance)
    except ValidationError:
        return FileInfo.model_validate(known)


def delete_file(storage: Storage, filename: str, now: datetime) -> bool:
    """Delete a file, its sidecar and the record of the job that made it; False if there is no such file.

    Raises FileBusyError while that job is queued or running. The job record goes first: should the
    file's deletion then fail, a retry finds the file and deletes it.
    """
    job_id = job_id_for(filename)
    record = JobStore(storage).get(job_id, now)
    own_record = record if record is not None and record.filename == filename else None
    if own_record is not None and not own_record.final:
        raise FileBusyError(filename)
    if storage.stat(filename) is None:
        return False
    if own_record is not None:
        storage.delete_jobs([job_id])
    storage.delete([filename])
    return True
