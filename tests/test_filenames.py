"""Generated file names: format, validation, and order."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from handler.audio.output import AudioFormat
from handler.filenames import (
    TIMESTAMP_FORMAT,
    created_at,
    filename_for,
    format_of,
    is_valid_filename,
    is_valid_job_id,
    job_id_for,
    new_filename,
)

MOMENT = datetime(2025, 5, 28, 13, 42, 11, 500_000, tzinfo=UTC)


def test_new_name_has_the_spec_format_in_utc() -> None:
    name = new_filename(MOMENT.astimezone(timezone(timedelta(hours=5))))
    assert name.startswith("gen_20250528_134211_")
    assert is_valid_filename(name)
    assert created_at(name) == MOMENT.replace(microsecond=0)


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_each_format_keeps_the_pattern_with_its_extension(audio_format: AudioFormat) -> None:
    name = new_filename(MOMENT, audio_format)
    assert name.startswith("gen_20250528_134211_")
    assert name.endswith(f".{audio_format.value}")
    assert len(name) == len("gen_20250528_134211_a1b2c3d4.") + len(audio_format.value)
    assert is_valid_filename(name)
    assert format_of(name) is audio_format
    job_id = job_id_for(name)
    assert is_valid_job_id(job_id)
    assert filename_for(job_id, audio_format) == name


def test_names_default_to_wav_as_the_contract_says() -> None:
    assert new_filename(MOMENT).endswith(".wav")
    assert filename_for("gen_20250528_134211_a1b2c3d4") == "gen_20250528_134211_a1b2c3d4.wav"


def test_names_sort_in_creation_order_within_a_second() -> None:
    moments = [MOMENT.replace(microsecond=us) for us in (0, 300, 250_000, 999_999)]
    names = [new_filename(moment) for moment in moments]
    assert sorted(names) == names


@pytest.mark.parametrize(
    "name",
    [
        "gen_20250528_134211_a1b2c3d4.WAV",
        "gen_20250528_134211_a1b2c3d.wav",
        "gen_20250528_134211_a1b2c3d4g.wav",
        "../gen_20250528_134211_a1b2c3d4.wav",
        "gen_20250528_134211_a1b2c3d4.wav/",
        "gen_20250528_134211_a1b2c3d4.wav\n",
        "gen_2025052_134211_a1b2c3d4.wav",
        "gen_20250528_134211_a1b2c3d4.aac",
        "gen_20250528_134211_a1b2c3d4.opus",
        "gen_20250528_134211_a1b2c3d4.flac.wav",
        "gen_20250528_134211_a1b2c3d4.json",
        "gen_20250528_134211_a1b2c3d4",
        "",
    ],
)
def test_anything_else_is_not_a_valid_name(name: str) -> None:
    assert not is_valid_filename(name)
    with pytest.raises(ValueError, match="not a generated file name"):
        created_at(name)
    with pytest.raises(ValueError, match="not a generated file name"):
        format_of(name)


@pytest.mark.parametrize(
    "stamp",
    [
        "20261203_235959",
        "20240229_120000",
        "20250229_120000",
        "20261301_000000",
        "20261200_000000",
        "20261131_000000",
        "20261203_240000",
        "20261203_236000",
        "20261203_235960",
        "20261203_235961",
        "00000101_000000",
        "00010101_000000",
    ],
)
def test_a_name_is_valid_and_dated_exactly_when_strptime_reads_its_time(stamp: str) -> None:
    name = f"gen_{stamp}_0a1b2c3d.wav"
    try:
        expected: datetime | None = datetime.strptime(stamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        expected = None
    assert is_valid_filename(name) is (expected is not None)
    if expected is None:
        with pytest.raises(ValueError, match="not a real time"):
            created_at(name)
    else:
        assert created_at(name) == expected
