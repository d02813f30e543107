"""Encoding generated audio into the file a client downloads, with libsndfile (through soundfile)."""

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile

from handler.audio.loudness import normalize
from handler.audio.output import AudioFormat, AudioOutput

SUBTYPES: dict[AudioFormat, str] = {
    AudioFormat.WAV: "PCM_16",
    AudioFormat.FLAC: "PCM_16",
    AudioFormat.OGG: "VORBIS",
    AudioFormat.MP3: "MPEG_LAYER_III",
}
"""libsndfile's encoding of each format. Ogg carries Vorbis, not Opus: libsndfile's Opus takes
8, 12, 16, 24 or 48 kHz only, and MusicGen makes 32 kHz."""

PCM_SCALE = 32767.0
"""Full scale as 16-bit samples: symmetric, so +1.0 and -1.0 both fit."""


@dataclass(frozen=True)
class EncodedAudio:
    """A generation as stored: the file's bytes and what its sidecar says of the audio."""

    data: bytes
    loudness_lufs: float | None
    seconds: float


def encode(samples: npt.ArrayLike, sample_rate: int, output: AudioOutput) -> EncodedAudio:
    """Mono `samples` normalised as `output` asks, as 16-bit PCM, encoded in its format.

    Every format is encoded from the same 16-bit samples, so the lossless ones (WAV, FLAC) decode
    to identical PCM and the lossy ones start from it.
    """
    normalized = normalize(samples, sample_rate, output.normalize)
    pcm = to_pcm16(normalized.samples)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, sample_rate, format=output.format.name, subtype=SUBTYPES[output.format])
    return EncodedAudio(buffer.getvalue(), normalized.loudness_lufs, pcm.size / sample_rate)


def to_pcm16(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
    """Samples within full scale as 16-bit integers, rounded to the nearest step."""
    return np.round(np.clip(samples, -1.0, 1.0) * PCM_SCALE).astype(np.int16)
