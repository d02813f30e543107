"""Files for storage tests: generated names at known times, and a storage that fails part-way."""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from handler.audio.output import AudioFormat
from handler.filenames import new_filename
from handler.storage import LocalStorage, Storage, StorageError

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
