"""Files for storage tests: generated names at known times, a storage that fails part-way, and one
whose listing is stale."""

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from handler.audio.output import AudioFormat
from handler.filenames import new_filename
from handler.storage import LocalStorage, Storage, StorageError, StoredFile

START = datetime(2025, 5, 28, 13, 42, 11, tzinfo=UTC)
"""When the first file of `fill` was made."""


def fill(storage: Storage, count: int, formats: tuple[AudioFormat, ...] = (AudioFormat.WAV,)) -> list[str]:
    """`count` files one minute apart, oldest first, taking `formats` in turn; each sidecar's prompt is its name."""
    names = [new_filename(START + timedelta(minutes=i), formats[i % len(formats)]) for i in range(count)]
    for name in names:
        storage.save(name, b"RIFF" + name.encode(), {"prompt": name})
    return names


class FailingSecondSave(LocalStorage):
    """Local storage whose second save of a file fails, as a full disk or a lost bucket would."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.saved = 0

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        if self.saved == 1:
            raise StorageError("disk full")
        super().save(filename, data, metadata)
        self.saved += 1


def after_the_latest_save(storage: Storage) -> None:
    """Return once the clock is in a later second than every file's save: S3 keeps whole seconds."""
    latest = max(f.saved_at for f in storage.list_files()).replace(microsecond=0)
    while datetime.now(UTC).replace(microsecond=0) <= latest:
        time.sleep(0.01)


class ListedOnce:
    """A storage whose listing stays as it was when this was made, as an instance that has
    listed and not yet deleted sees it; deletes reach the storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.listing = storage.list_files()

    def list_files(self) -> list[StoredFile]:
        return self.listing

    def delete(self, filenames: Sequence[str]) -> None:
        self.storage.delete(filenames)
