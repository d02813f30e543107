"""Setting generated audio's level: integrated loudness (ITU-R BS.1770, measured by pyloudnorm),
peak, or none, with a floor under which near-silence is never amplified."""

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyloudnorm
from scipy.signal import resample_poly

from handler.audio.output import Normalization

TARGET_LUFS = -14.0
"""Integrated loudness that `loudness` normalises to: audiocraft's `audio_write` default, and the
level streaming services play music at."""

TRUE_PEAK_CEILING_DBTP = -1.0
"""Highest true peak `loudness` allows: the headroom lossy encoders need not to clip (EBU R 128,
the streaming services' -1 dBTP). A clip that would pass it gets less gain, and stays quieter than
the target, rather than being limited or clipped."""

TRUE_PEAK_RATE = 192000
"""BS.1770's true-peak meter looks at the signal upsampled to at least 192 kHz (4x at 48 kHz), where
the peaks between samples show: 6x at MusicGen's 32 kHz."""

PEAK = 0.98
"""Peak level of `peak` normalisation: just under full scale so 16-bit rounding never clips."""

SILENCE_FLOOR_DBFS = -54.0
"""RMS level below which audio counts as near-silence and is never amplified: raising it to -14 LUFS
would take 40 dB or more of gain and turn a broken or random model's hiss into loud noise."""


@dataclass(frozen=True)
class NormalizedAudio:
    """Mono samples within full scale, and their integrated loudness."""

    samples: npt.NDArray[np.float64]
    loudness_lufs: float | None
    """BS.1770 integrated loudness; None where it can't be measured: shorter than one 400 ms
    gating block, or silent (every block below the -70 LUFS absolute gate)."""


def normalize(samples: npt.ArrayLike, sample_rate: int, mode: Normalization) -> NormalizedAudio:
    """`samples` at the level `mode` asks for, clipped to full scale; NaN and infinities read as silence."""
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    if mode is Normalization.LOUDNESS:
        gain = loudness_gain(audio, sample_rate)
    elif mode is Normalization.PEAK:
        gain = peak_gain(audio)
    else:
        gain = 1.0
    if is_near_silent(audio):
        gain = min(gain, 1.0)
    normalized = np.clip(audio * gain, -1.0, 1.0)
    return NormalizedAudio(normalized, integrated_loudness(normalized, sample_rate))


def loudness_gain(audio: npt.NDArray[np.float64], sample_rate: int) -> float:
    """The gain that brings `audio` to TARGET_LUFS, lowered where its true peak would pass the ceiling.

    1 where the loudness can't be measured (too short, or silent).
    """
    loudness = integrated_loudness(audio, sample_rate)
    if loudness is None:
        return 1.0
    gain = decibels_to_gain(TARGET_LUFS - loudness)
    peak = true_peak(audio, sample_rate)
    ceiling = decibels_to_gain(TRUE_PEAK_CEILING_DBTP)
    if peak * gain > ceiling:
        gain = ceiling / peak
    return gain


def peak_gain(audio: npt.NDArray[np.float64]) -> float:
    """The gain that brings the highest sample to PEAK; 1 for silence."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return PEAK / peak if peak > 0.0 else 1.0


def integrated_loudness(audio: npt.NDArray[np.float64], sample_rate: int) -> float | None:
    """BS.1770 integrated loudness in LUFS, or None where it can't be measured."""
    meter = pyloudnorm.Meter(sample_rate)
    if audio.size < meter.block_size * sample_rate:
        return None
    loudness = float(meter.integrated_loudness(audio))
    return loudness if math.isfinite(loudness) else None


def true_peak(audio: npt.NDArray[np.float64], sample_rate: int) -> float:
    """BS.1770's true peak (linear, 1.0 is full scale): the highest magnitude of the signal oversampled to 192 kHz."""
    if not audio.size:
        return 0.0
    oversampled = resample_poly(audio, math.ceil(TRUE_PEAK_RATE / sample_rate), 1)
    return float(max(np.max(np.abs(oversampled)), np.max(np.abs(audio))))


def decibels_to_gain(decibels: float) -> float:
    """A level difference in dB as a linear gain."""
    return math.pow(10.0, decibels / 20.0)


def is_near_silent(audio: npt.NDArray[np.float64]) -> bool:
    """Whether `audio`'s RMS level is below the silence floor."""
    if not audio.size:
        return True
    rms = math.sqrt(float(np.mean(np.square(audio))))
    return rms == 0.0 or 20.0 * math.log10(rms) < SILENCE_FLOOR_DBFS
