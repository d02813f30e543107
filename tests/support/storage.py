"""Files for storage tests: generated names at known times."""

from datetime import UTC, datetime, timedelta

from handler.filenames import new_filename
from handler.storage import Storage

START = datetime(2025, 5, 28, 13, 42, 11, tzinfo=UTC)
"""When the first file of `fill` was made."""


def fill(storage: Storage, count: int) -> list[str]:
    """`count` files one minute apart, oldest first."""
    names = [new_filename(START + timedelta(minutes=i)) for i in range(count)]
    for name in names:
        storage.save(name, b"RIFF" + name.encode(), {"prompt": name})
    return names
