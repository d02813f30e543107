"""WAV encoding of generated audio."""

import io
import wave

import numpy as np
import numpy.typing as npt

PEAK = 0.98
"""Peak level after normalisation: just under full scale so 16-bit rounding never clips."""


def encode_wav(samples: npt.NDArray[np.floating], sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV of `samples`, peak-normalised so it never clips."""
    audio = np.asarray(samples, dtype=np.float64).reshape(-1)
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.0:
        audio = audio * (PEAK / peak)
    pcm = np.round(audio * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()
