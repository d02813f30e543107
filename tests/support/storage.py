"""Files for storage tests: generated names at known times."""

from datetime import UTC, datetime, timedelta

from handler.audio.output import AudioFormat
from handler.filenames import new_filename
from handler.storage import Storage

START = datetime(2025, 5, 28, 13, 42, 11, tzinfo=UTC)
"""When the first file of `fill` was made."""


def fill(storage: Storage, count: int, formats: tuple[AudioFormat, ...] = (AudioFormat.WAV,)) -> list[str]:
    """`count` files one minute apart, oldest first, taking `formats` in turn; each sidecar's prompt is its name."""
    names = [new_filename(START + timedelta(minutes=i), formats[i % len(formats)]) for i in range(count)]
    for name in names:
        storage.save(name, b"RIFF" + name.encode(), {"prompt": name})
    return names
