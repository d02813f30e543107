"""Reading WAV bytes back in tests."""

import io
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Wav:
    sample_rate: int
    channels: int
    sample_width: int
    samples: npt.NDArray[np.int16]


def read_wav(data: bytes) -> Wav:
    with wave.open(io.BytesIO(data), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        return Wav(wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), np.frombuffer(frames, "<i2"))
