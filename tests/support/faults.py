"""Storage that fails where a test says: S3 calls refused through botocore's event hooks, and a
local directory whose renames or listings fail as a full or broken disk does."""

import errno
import os
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from handler.storage import LocalStorage, S3Storage, metadata_name

KeyMatcher = Callable[[str], bool]


def is_job_record(key: str) -> bool:
    return "/jobs/" in f"/{key}"


def is_sidecar(key: str) -> bool:
    return key.endswith(".json") and not is_job_record(key)


def is_audio(key: str) -> bool:
    return not key.endswith(".json") and not is_job_record(key)


def anything(key: str) -> bool:
    return True


S3_FAULTS: dict[str, tuple[str, KeyMatcher]] = {
    "sidecar put": ("PutObject", is_sidecar),
    "audio put": ("PutObject", is_audio),
    "job record put": ("PutObject", is_job_record),
    "list": ("ListObjectsV2", anything),
    "delete": ("DeleteObjects", anything),
}
"""Each S3 call a generation makes, by what it does: the operation and which keys it fails for."""


class S3Faults:
    """Makes one kind of call of an S3 storage's client fail (InternalError) while `active`."""

    def __init__(self, storage: S3Storage, fault: str) -> None:
        self.operation, self.matches = S3_FAULTS[fault]
        self.active = True
        self.refused = 0
        storage.client.meta.events.register(f"before-parameter-build.s3.{self.operation}", self._refuse)

    def _refuse(self, params: dict[str, Any], **_: Any) -> None:
        if self.active and self.matches(str(params.get("Key", params.get("Prefix", "")))):
            self.refused += 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, self.operation)


class FailingOs:
    """The `os` module as `handler.storage.local` sees it, but with renames onto matching names
    (the last step of every write) failing with ENOSPC, or every directory scan failing with EIO."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.active = True
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def replace(self, source: str, destination: str) -> None:
        matches = LOCAL_WRITE_FAULTS.get(self.fault)
        if self.active and matches is not None and matches(str(destination)):
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        os.replace(source, destination)

    def scandir(self, path: Any = ".") -> Any:
        if self.active and self.fault == "list":
            self.refused += 1
            raise OSError(errno.EIO, "Input/output error")
        return os.scandir(path)


LOCAL_WRITE_FAULTS: dict[str, KeyMatcher] = {
    "sidecar write": is_sidecar,
    "audio write": is_audio,
    "job record write": is_job_record,
}
LOCAL_FAULTS = (*LOCAL_WRITE_FAULTS, "list")


def orphan_sidecars(keys: list[str]) -> list[str]:
    """Sidecars whose file is not there."""
    files = {key for key in keys if is_audio(key)}
    sidecars = {key for key in keys if is_sidecar(key)}
    return sorted(sidecars - {metadata_name(key) for key in files})


def local_keys(storage: LocalStorage) -> list[str]:
    """Every file under a local storage's directory, as relative paths."""
    return sorted(str(path.relative_to(storage.directory)) for path in storage.directory.rglob("*") if path.is_file())
