"""WAV encoding."""

import numpy as np

from handler.audio import PEAK, encode_wav
from tests.support.wav import read_wav


def test_wav_is_mono_16_bit_at_the_given_rate_with_every_sample() -> None:
    wav = read_wav(encode_wav(np.zeros(32000 * 3, dtype=np.float32), 32000))
    assert (wav.sample_rate, wav.channels, wav.sample_width, len(wav.samples)) == (32000, 1, 2, 96000)


def test_loud_audio_is_peak_normalised_and_never_clips() -> None:
    samples = np.array([0.0, 3.5, -7.0, 1.0], dtype=np.float32)
    pcm = read_wav(encode_wav(samples, 32000)).samples
    assert int(np.abs(pcm.astype(np.int32)).max()) == round(PEAK * 32767)
    assert pcm[2] == -round(PEAK * 32767)
    assert pcm[1] == round(0.5 * PEAK * 32767)


def test_quiet_audio_is_raised_to_the_same_peak() -> None:
    pcm = read_wav(encode_wav(np.array([0.001, -0.0005], dtype=np.float32), 32000)).samples
    assert pcm[0] == round(PEAK * 32767)


def test_silence_and_non_finite_values_stay_finite() -> None:
    assert not read_wav(encode_wav(np.zeros(10, dtype=np.float32), 32000)).samples.any()
    pcm = read_wav(encode_wav(np.array([np.nan, np.inf, 0.5], dtype=np.float32), 32000)).samples
    assert list(pcm[:2]) == [0, 0]
