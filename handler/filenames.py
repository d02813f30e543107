"""Names of generated files: how they are made and how a requested name is checked."""

import re
import secrets
from datetime import UTC, datetime

JOB_ID_PATTERN = re.compile(r"gen_(\d{8}_\d{6})_[0-9a-f]{8}")
FILENAME_PATTERN = re.compile(JOB_ID_PATTERN.pattern + r"\.wav")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def new_filename(now: datetime) -> str:
    """A fresh `gen_YYYYMMDD_HHMMSS_<8 hex>.wav` name for a file made at `now` (UTC).

    The hex part starts with the fraction of the second (3 hex digits, 1/4096 s) and ends with
    5 random ones, so names sort in creation order even within one second: S3 listings only
    keep whole seconds, and the file cap must delete the truly oldest.
    """
    now = now.astimezone(UTC)
    fraction = now.microsecond * 4096 // 1_000_000
    return f"gen_{now.strftime(TIMESTAMP_FORMAT)}_{fraction:03x}{secrets.token_hex(3)[:5]}.wav"


def is_valid_filename(name: str) -> bool:
    """Whether `name` is exactly a generated file's name (no paths, no other extensions, a real date)."""
    match = FILENAME_PATTERN.fullmatch(name)
    return match is not None and _is_timestamp(match.group(1))


def _is_timestamp(text: str) -> bool:
    try:
        datetime.strptime(text, TIMESTAMP_FORMAT)
    except ValueError:
        return False
    return True


def created_at(name: str) -> datetime:
    """The UTC creation time encoded in a valid generated file's name."""
    match = FILENAME_PATTERN.fullmatch(name)
    if match is None:
        raise ValueError(f"not a generated file name: {name!r}")
    return datetime.strptime(match.group(1), TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def is_valid_job_id(job_id: str) -> bool:
    """Whether `job_id` is exactly a job's id: the name of the file it makes, without `.wav`."""
    return is_valid_filename(filename_for(job_id))


def job_id_for(filename: str) -> str:
    """The id of the job that makes `filename`."""
    return filename.removesuffix(".wav")


def filename_for(job_id: str) -> str:
    """The file the job `job_id` makes."""
    return f"{job_id}.wav"
