"""Encoding: every format's bytes, read back by libsndfile."""

import numpy as np
import pytest

from handler.audio.encoding import encode, to_pcm16
from handler.audio.loudness import TARGET_LUFS, normalize
from handler.audio.output import MEDIA_TYPES, AudioFormat, AudioOutput, Normalization
from tests.support.audio import SAMPLE_RATE, decode, loudness_lufs, music_like
from tests.support.wav import read_wav

LIBSNDFILE_NAMES = {
    AudioFormat.WAV: ("WAV", "PCM_16"),
    AudioFormat.FLAC: ("FLAC", "PCM_16"),
    AudioFormat.OGG: ("OGG", "VORBIS"),
    AudioFormat.MP3: ("MP3", "MPEG_LAYER_III"),
}


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_each_format_decodes_as_mono_32_khz_with_every_sample(audio_format: AudioFormat) -> None:
    audio = music_like(seconds=3.0)
    encoded = encode(audio, SAMPLE_RATE, AudioOutput(audio_format, Normalization.LOUDNESS))
    decoded = decode(encoded.data)
    assert (decoded.format, decoded.subtype) == LIBSNDFILE_NAMES[audio_format]
    assert (decoded.sample_rate, decoded.channels, len(decoded.samples)) == (SAMPLE_RATE, 1, len(audio))
    assert encoded.seconds == 3.0


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_each_format_reaches_the_loudness_target(audio_format: AudioFormat) -> None:
    encoded = encode(music_like(), SAMPLE_RATE, AudioOutput(audio_format, Normalization.LOUDNESS))
    assert loudness_lufs(decode(encoded.data).samples) == pytest.approx(TARGET_LUFS, abs=0.5)
    assert encoded.loudness_lufs == pytest.approx(TARGET_LUFS, abs=0.5)


@pytest.mark.parametrize("audio_format", [AudioFormat.WAV, AudioFormat.FLAC])
def test_lossless_formats_hold_exactly_the_normalised_16_bit_samples(audio_format: AudioFormat) -> None:
    audio = music_like(seconds=2.0)
    expected = to_pcm16(normalize(audio, SAMPLE_RATE, Normalization.LOUDNESS).samples)
    encoded = encode(audio, SAMPLE_RATE, AudioOutput(audio_format, Normalization.LOUDNESS))
    assert np.array_equal(decode(encoded.data).pcm, expected)


@pytest.mark.parametrize("audio_format", [AudioFormat.OGG, AudioFormat.MP3])
def test_lossy_formats_sound_like_the_lossless_ones(audio_format: AudioFormat) -> None:
    audio = music_like(seconds=3.0)
    lossless = decode(encode(audio, SAMPLE_RATE, AudioOutput(AudioFormat.WAV)).data).samples
    lossy = decode(encode(audio, SAMPLE_RATE, AudioOutput(audio_format)).data).samples
    residual = lossy - lossless
    signal_to_noise_db = 10 * np.log10(np.sum(lossless**2) / np.sum(residual**2))
    assert signal_to_noise_db > 10


def test_the_wav_is_the_contracts_16_bit_pcm_that_any_wav_reader_opens() -> None:
    encoded = encode(music_like(seconds=1.0), SAMPLE_RATE, AudioOutput(AudioFormat.WAV))
    wav = read_wav(encoded.data)
    assert (wav.sample_rate, wav.channels, wav.sample_width, len(wav.samples)) == (SAMPLE_RATE, 1, 2, SAMPLE_RATE)


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_the_same_samples_encode_to_the_same_audio(audio_format: AudioFormat) -> None:
    audio = music_like(seconds=2.0)
    first, second = (encode(audio, SAMPLE_RATE, AudioOutput(audio_format)) for _ in range(2))
    assert np.array_equal(decode(first.data).pcm, decode(second.data).pcm)
    if audio_format is not AudioFormat.OGG:  # each Ogg stream gets a random serial number
        assert first.data == second.data


def test_full_scale_rounds_to_the_extreme_16_bit_values_without_wrapping() -> None:
    pcm = to_pcm16(np.array([1.0, -1.0, 1.5, -1.5, 0.5]))
    assert list(pcm) == [32767, -32767, 32767, -32767, 16384]


def test_each_format_has_its_media_type() -> None:
    assert MEDIA_TYPES == {
        AudioFormat.WAV: "audio/wav",
        AudioFormat.FLAC: "audio/flac",
        AudioFormat.OGG: "audio/ogg",
        AudioFormat.MP3: "audio/mpeg",
    }
    assert all(audio_format.media_type == MEDIA_TYPES[audio_format] for audio_format in AudioFormat)
