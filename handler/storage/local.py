"""The local-directory backend: files and job records under one directory."""

import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handler.filenames import created_at, is_valid_filename, is_valid_job_id
from handler.processes import pid_is_alive
from handler.storage.base import (
    JOBS_FOLDER,
    Download,
    LocalFile,
    StorageError,
    StoredFile,
    decode_json,
    encode_json,
    job_record_name,
    metadata_name,
    newest_first,
)

logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp-"


def _temporary_file_pid(name: str) -> int | None:
    pid, dash, _ = name.removeprefix(TEMPORARY_PREFIX).partition("-")
    return int(pid) if name.startswith(TEMPORARY_PREFIX) and dash and pid.isdigit() else None


def _stored_file(filename: str, info: os.stat_result) -> StoredFile:
    saved_at = datetime.fromtimestamp(info.st_mtime_ns / 1e9, UTC)
    return StoredFile(filename, info.st_size, created_at(filename), saved_at)


class LocalStorage:
    """Files in a local directory; each write is atomic (temporary file, then rename)."""

    backend = "local"
    download_origin = None

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        """Write the sidecar, then the file, each atomically; on failure remove the sidecar."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.directory / metadata_name(filename), encode_json(metadata))
            self._write_atomic(self.directory / filename, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._remove(metadata_name(filename))
            raise StorageError("could not write to local storage") from exc

    def list_files(self) -> list[StoredFile]:
        """Every generated file in the directory, newest first."""
        if not self.directory.is_dir():
            return []
        try:
            files = [
                _stored_file(entry.name, entry.stat())
                for entry in os.scandir(self.directory)
                if is_valid_filename(entry.name) and entry.is_file()
            ]
        except OSError as exc:
            raise StorageError("could not list local storage") from exc
        return newest_first(files)

    def stat(self, filename: str) -> StoredFile | None:
        """The file as listed, or None if there is none."""
        try:
            info = (self.directory / filename).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError("could not read local storage") from exc
        if not stat.S_ISREG(info.st_mode):
            return None
        return _stored_file(filename, info)

    def read_metadata(self, filenames: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sidecars of `filenames` that exist and hold a JSON object."""
        sidecars = {}
        for filename in filenames:
            try:
                data = (self.directory / metadata_name(filename)).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StorageError("could not read a sidecar") from exc
            sidecar = decode_json(data)
            if sidecar is None:
                logger.warning("sidecar is not a JSON object", extra={"file": filename})
            else:
                sidecars[filename] = sidecar
        return sidecars

    def download(self, filename: str) -> Download | None:
        """The file's path, served as it is."""
        path = self.directory / filename
        return LocalFile(path) if path.is_file() else None

    def delete(self, filenames: Sequence[str]) -> None:
        """Delete files and their sidecars; missing ones are skipped."""
        try:
            for filename in filenames:
                self._remove(filename)
                self._remove(metadata_name(filename))
        except OSError as exc:
            raise StorageError("could not delete from local storage") from exc

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None:
        """Write a job record atomically."""
        try:
            (self.directory / JOBS_FOLDER).mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.directory / job_record_name(job_id), encode_json(record))
        except OSError as exc:
            raise StorageError("could not write a job record") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """A job record, or None if there is none."""
        try:
            record: dict[str, Any] = json.loads((self.directory / job_record_name(job_id)).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError("could not read a job record") from exc
        return record

    def list_jobs(self) -> list[str]:
        """The ids of every job record."""
        folder = self.directory / JOBS_FOLDER
        if not folder.is_dir():
            return []
        try:
            return [path.stem for path in folder.glob("*.json") if is_valid_job_id(path.stem)]
        except OSError as exc:
            raise StorageError("could not list job records") from exc

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete job records; missing ones are skipped."""
        try:
            for job_id in job_ids:
                self._remove(job_record_name(job_id))
        except OSError as exc:
            raise StorageError("could not delete job records") from exc

    def remove_leftovers(self) -> None:
        """Remove the temporary files of writers that were killed mid-write (their process is gone)."""
        try:
            for folder in (self.directory, self.directory / JOBS_FOLDER):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for entry in os.scandir(folder):
                        pid = _temporary_file_pid(entry.name)
                        if pid is not None and pid != os.getpid() and not pid_is_alive(pid):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)
        except OSError as exc:
            raise StorageError("could not clean up local storage") from exc

    def _write_atomic(self, path: Path, data: bytes) -> None:
        # The writer's pid in the name tells a killed writer's leftovers from a live one's work.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()
