"""What a client can ask for: the file format and the normalisation, with their names, extensions
and media types. Dependency-free, so file names and schemas use it without loading any codec."""

from dataclasses import dataclass
from enum import StrEnum


class AudioFormat(StrEnum):
    """A file format a generation can be stored in."""

    WAV = "wav"
    FLAC = "flac"
    OGG = "ogg"
    MP3 = "mp3"

    @property
    def extension(self) -> str:
        """The file name extension, with its dot."""
        return f".{self.value}"

    @property
    def media_type(self) -> str:
        """The `Content-Type` a download of this format carries."""
        return MEDIA_TYPES[self]


MEDIA_TYPES: dict[AudioFormat, str] = {
    AudioFormat.WAV: "audio/wav",
    AudioFormat.FLAC: "audio/flac",
    AudioFormat.OGG: "audio/ogg",
    AudioFormat.MP3: "audio/mpeg",
}

FORMAT_DESCRIPTIONS: dict[AudioFormat, str] = {
    AudioFormat.WAV: "16-bit PCM WAV (the default)",
    AudioFormat.FLAC: "16-bit FLAC, lossless: the same samples as the WAV in fewer bytes",
    AudioFormat.OGG: "Ogg Vorbis (not Opus: Opus has no 32 kHz mode, and resampling would change the audio)",
    AudioFormat.MP3: "MP3 (MPEG-1 Layer III)",
}


class Normalization(StrEnum):
    """How the generated audio's level is set before it is encoded."""

    LOUDNESS = "loudness"
    PEAK = "peak"
    NONE = "none"


NORMALIZATION_DESCRIPTIONS: dict[Normalization, str] = {
    Normalization.LOUDNESS: (
        "integrated loudness to -14 LUFS (ITU-R BS.1770), true peak at most -1 dBTP (the default:"
        " every clip plays at the same level, as on streaming services)"
    ),
    Normalization.PEAK: "the highest sample raised or lowered to 0.98 of full scale",
    Normalization.NONE: "the model's own level, clipped to full scale only",
}


@dataclass(frozen=True)
class AudioOutput:
    """How a generation is delivered: its file format and its normalisation."""

    format: AudioFormat = AudioFormat.WAV
    normalize: Normalization = Normalization.LOUDNESS


DEFAULT_OUTPUT = AudioOutput()
"""What a request that names neither format nor normalisation gets."""
