"""Names of generated files: how they are made and how a requested name is checked."""

import re
import secrets
from datetime import UTC, datetime

from handler.audio.output import AudioFormat

JOB_ID_PATTERN = re.compile(r"gen_(\d{8}_\d{6})_[0-9a-f]{8}")
FILENAME_PATTERN = re.compile(JOB_ID_PATTERN.pattern + r"\.(" + "|".join(f.value for f in AudioFormat) + ")")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def new_filename(now: datetime, audio_format: AudioFormat = AudioFormat.WAV) -> str:
    """A fresh `gen_YYYYMMDD_HHMMSS_<8 hex>.<format>` name for a file made at `now` (UTC).

    The hex part starts with the fraction of the second (3 hex digits, 1/4096 s) and ends with
    5 random ones, so names sort in creation order even within one second: S3 listings only
    keep whole seconds, and the file cap must delete the truly oldest.
    """
    now = now.astimezone(UTC)
    fraction = now.microsecond * 4096 // 1_000_000
    return f"gen_{now.strftime(TIMESTAMP_FORMAT)}_{fraction:03x}{secrets.token_hex(3)[:5]}{audio_format.extension}"


def is_valid_filename(name: str) -> bool:
    """Whether `name` is exactly a generated file's name (no paths, no other extensions, a real date)."""
    match = FILENAME_PATTERN.fullmatch(name)
    return match is not None and _timestamp(match.group(1)) is not None


def _timestamp(text: str) -> datetime | None:
    """The UTC time `YYYYMMDD_HHMMSS` (as the pattern matched it) names, or None if it is no real
    time. What `strptime` with TIMESTAMP_FORMAT accepts, at a tenth of its cost: a listing parses
    every stored name."""
    try:
        return datetime(
            int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]), int(text[13:15]),
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        return None


def _match(name: str) -> re.Match[str]:
    match = FILENAME_PATTERN.fullmatch(name)
    if match is None:
        raise ValueError(f"not a generated file name: {name!r}")
    return match


def created_at(name: str) -> datetime:
    """The UTC creation time encoded in a valid generated file's name."""
    when = _timestamp(_match(name).group(1))
    if when is None:
        raise ValueError(f"not a real time: {name!r}")
    return when


def format_of(name: str) -> AudioFormat:
    """The format of a valid generated file, from its extension."""
    return AudioFormat(_match(name).group(2))


def is_valid_job_id(job_id: str) -> bool:
    """Whether `job_id` is exactly a job's id: the name of the file it makes, without its extension."""
    return is_valid_filename(filename_for(job_id))


def job_id_for(filename: str) -> str:
    """The id of the job that makes `filename`: the name without its extension."""
    return filename.partition(".")[0]


def filename_for(job_id: str, audio_format: AudioFormat = AudioFormat.WAV) -> str:
    """The file the job `job_id` makes in `audio_format`."""
    return f"{job_id}{audio_format.extension}"
