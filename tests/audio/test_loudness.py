"""Normalisation: loudness to -14 LUFS under a -1 dBTP ceiling, peak, none, and the silence floor."""

import math

import numpy as np
import pytest

from handler.audio.loudness import PEAK, SILENCE_FLOOR_DBFS, TARGET_LUFS, TRUE_PEAK_CEILING_DBTP, normalize
from handler.audio.output import Normalization
from tests.support.audio import SAMPLE_RATE, loudness_lufs, music_like, true_peak_dbtp


@pytest.mark.parametrize("level_dbfs", [-45.0, -30.0, -6.0])
def test_loudness_brings_music_to_the_target_from_any_level(level_dbfs: float) -> None:
    result = normalize(music_like(level_dbfs=level_dbfs), SAMPLE_RATE, Normalization.LOUDNESS)
    assert loudness_lufs(result.samples) == pytest.approx(TARGET_LUFS, abs=0.5)
    assert result.loudness_lufs == pytest.approx(loudness_lufs(result.samples), abs=0.01)
    assert true_peak_dbtp(result.samples) <= TRUE_PEAK_CEILING_DBTP + 0.05


def test_a_clip_too_peaky_for_the_target_stops_at_the_true_peak_ceiling() -> None:
    # Quiet music with a few loud clicks: -14 LUFS would push the clicks far past full scale.
    audio = music_like(level_dbfs=-40.0)
    audio[::16000] = 0.5
    result = normalize(audio, SAMPLE_RATE, Normalization.LOUDNESS)
    assert true_peak_dbtp(result.samples) == pytest.approx(TRUE_PEAK_CEILING_DBTP, abs=0.1)
    assert result.loudness_lufs is not None
    assert result.loudness_lufs < TARGET_LUFS - 3
    assert result.loudness_lufs == pytest.approx(loudness_lufs(result.samples), abs=0.01)
    assert np.max(np.abs(result.samples)) < 1.0, "lowered, not clipped"


def test_peak_raises_or_lowers_the_highest_sample_to_the_peak_level() -> None:
    loud = normalize(np.array([0.0, 3.5, -7.0, 1.0] * 8000), SAMPLE_RATE, Normalization.PEAK).samples
    assert np.max(np.abs(loud)) == pytest.approx(PEAK)
    assert loud[1] == pytest.approx(0.5 * PEAK)
    quiet = normalize(music_like(level_dbfs=-30.0), SAMPLE_RATE, Normalization.PEAK).samples
    assert np.max(np.abs(quiet)) == pytest.approx(PEAK)


def test_none_keeps_the_level_and_clips_to_full_scale_only() -> None:
    audio = music_like(level_dbfs=-20.0)
    assert np.array_equal(normalize(audio, SAMPLE_RATE, Normalization.NONE).samples, audio)
    over = normalize(np.array([0.25, 1.5, -3.0] * 8000), SAMPLE_RATE, Normalization.NONE)
    assert list(over.samples[:3]) == [0.25, 1.0, -1.0]


@pytest.mark.parametrize("mode", list(Normalization))
def test_near_silence_is_never_amplified_into_noise(mode: Normalization) -> None:
    hiss = np.random.default_rng(1).standard_normal(SAMPLE_RATE * 2) * 10 ** ((SILENCE_FLOOR_DBFS - 6) / 20)
    result = normalize(hiss, SAMPLE_RATE, mode)
    assert np.array_equal(result.samples, hiss)


@pytest.mark.parametrize("mode", list(Normalization))
def test_silence_stays_silent_with_no_loudness_and_no_nan(mode: Normalization) -> None:
    result = normalize(np.zeros(SAMPLE_RATE * 2), SAMPLE_RATE, mode)
    assert not result.samples.any()
    assert result.loudness_lufs is None


@pytest.mark.parametrize("mode", list(Normalization))
def test_non_finite_samples_read_as_silence(mode: Normalization) -> None:
    audio = music_like(seconds=2.0, level_dbfs=-20.0)
    audio[:3] = [np.nan, np.inf, -np.inf]
    result = normalize(audio, SAMPLE_RATE, mode)
    assert np.isfinite(result.samples).all()
    assert list(result.samples[:3]) == [0.0, 0.0, 0.0]
    assert result.loudness_lufs is not None
    assert math.isfinite(result.loudness_lufs)


def test_audio_shorter_than_a_gating_block_has_no_loudness_and_keeps_its_level() -> None:
    short = music_like(seconds=0.2, level_dbfs=-20.0)
    result = normalize(short, SAMPLE_RATE, Normalization.LOUDNESS)
    assert result.loudness_lufs is None
    assert np.array_equal(result.samples, short)
