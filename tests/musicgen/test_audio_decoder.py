"""EnCodec decoding in plain torch, bit-identical to transformers' EncodecModel.decode."""

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import EncodecConfig, EncodecModel, MusicgenForConditionalGeneration

from handler.musicgen.audio_decoder import EncodecAudioDecoder, PaddedConv1d, TrimmedConvTranspose1d
from handler.native import runtime
from handler.native.convolution import NativeConvolution
from handler.native.runtime import NativeKernels

ROOT = Path(__file__).resolve().parents[2]

MUSICGEN_SMALL_CODEC = {
    "sampling_rate": 32000,
    "audio_channels": 1,
    "num_filters": 64,
    "upsampling_ratios": [8, 5, 4, 4],
    "codebook_size": 2048,
    "codebook_dim": 128,
    "hidden_size": 128,
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
    "target_bandwidths": [2.2],
    "use_causal_conv": False,
    "use_conv_shortcut": False,
    "normalize": False,
    "norm_type": "weight_norm",
    "pad_mode": "reflect",
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "compress": 2,
    "trim_right_ratio": 1.0,
    "chunk_length_s": None,
    "overlap": None,
}

SMALL_CODEC = {
    **MUSICGEN_SMALL_CODEC,
    "num_filters": 4,
    "codebook_size": 32,
    "codebook_dim": 8,
    "hidden_size": 8,
    "num_lstm_layers": 1,
}

CODEC_VARIANTS: list[dict[str, Any]] = [
    # Dilated residual blocks, conv shortcuts, zero padding, a two-layer LSTM.
    {"num_residual_layers": 2, "use_conv_shortcut": True, "pad_mode": "constant", "num_lstm_layers": 2},
    # Causal convolutions with a partial right trim of the transposed convolutions.
    {"use_causal_conv": True, "trim_right_ratio": 0.5},
    # Odd strides (asymmetric trims), at a sampling rate that keeps 50 frames/s and enough codebooks.
    {"use_causal_conv": True, "upsampling_ratios": [3, 2], "sampling_rate": 300},
    {"upsampling_ratios": [3, 2], "sampling_rate": 300},
]


def random_codec(**overrides: Any) -> Any:
    """A random EnCodec with random (instead of all-zero) codebooks."""
    torch.manual_seed(0)
    model: Any = EncodecModel(EncodecConfig(**overrides))
    model.eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_()
    return model


def random_codes(model: Any, batch: int, frames: int, codebooks: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 1000 + frames)
    return torch.randint(0, model.config.codebook_size, (1, batch, codebooks, frames), generator=generator)


def reference(model: Any, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        audio: torch.Tensor = model.decode(codes, audio_scales=[None] * codes.shape[1]).audio_values
    return audio


def ours(decoder: EncodecAudioDecoder, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return decoder.decode(codes)


@pytest.fixture(scope="module")
def tiny_codec(tiny_model_dir: Path) -> Any:
    """The tiny MusicGen's EnCodec, its weight norms as parametrizations (as loaded)."""
    model: Any = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    model.eval()
    return model.audio_encoder


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frames", [1, 2, 7, 60])
def test_tiny_model_matches_transformers(tiny_codec: Any, batch: int, frames: int) -> None:
    decoder = EncodecAudioDecoder.from_transformers(tiny_codec)
    codes = random_codes(tiny_codec, batch, frames)
    expected = reference(tiny_codec, codes)
    actual = ours(decoder, codes)
    assert actual.shape == (batch, 1, frames * decoder.hop_length)
    assert torch.equal(actual, expected)


def test_decoder_holds_no_transformers_objects(tiny_codec: Any) -> None:
    decoder = EncodecAudioDecoder.from_transformers(tiny_codec)
    for module in decoder.modules():
        assert not type(module).__module__.startswith("transformers")
    for tensor in [*decoder.parameters(), *decoder.buffers()]:
        assert not tensor.requires_grad
        assert not tensor.is_inference()
    assert (decoder.hop_length, decoder.sampling_rate, decoder.frame_rate) == (640, 32000, 50)


def test_musicgen_small_shaped_codec_matches_transformers() -> None:
    codec = random_codec(**MUSICGEN_SMALL_CODEC)
    decoder = EncodecAudioDecoder.from_transformers(codec)
    codes = random_codes(codec, batch=2, frames=20)
    assert torch.equal(ours(decoder, codes), reference(codec, codes))


def test_serving_in_bfloat16_stays_close_to_float32() -> None:
    codec = random_codec(**MUSICGEN_SMALL_CODEC)
    decoder = EncodecAudioDecoder.from_transformers(codec)
    codes = random_codes(codec, batch=1, frames=20)
    expected = ours(decoder, codes)
    decoder.prepare_to_serve(torch.bfloat16)
    actual = ours(decoder, codes)
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    assert {p.dtype for p in decoder.output_layers.parameters()} == {torch.float32}
    upsamplers = [m for m in decoder.modules() if isinstance(m, TrimmedConvTranspose1d)]
    assert upsamplers
    assert all(m.phase_products is not None for m in upsamplers)  # two products each
    pointwise = [m for m in decoder.modules() if isinstance(m, PaddedConv1d) and m.conv.kernel_size[0] == 1]
    assert pointwise
    assert all(m.pointwise_weight is not None for m in pointwise)
    noise = (actual - expected).pow(2).mean() / expected.pow(2).mean()
    assert 30.0 < -10 * torch.log10(noise) < 80.0  # close, yet really computed in bfloat16


def test_serving_in_float32_at_musicgen_smalls_shape_matches_transformers_up_to_rounding() -> None:
    # its first upsampling (1024 channels in) runs as two products, the others as convolutions
    codec = random_codec(**MUSICGEN_SMALL_CODEC)
    decoder = EncodecAudioDecoder.from_transformers(codec)
    decoder.prepare_to_serve(torch.float32)
    upsamplers = [m for m in decoder.modules() if isinstance(m, TrimmedConvTranspose1d)]
    assert [m.phase_products is not None for m in upsamplers] == [True, False, False, False]
    codes = random_codes(codec, batch=1, frames=20)
    expected = reference(codec, codes)
    torch.testing.assert_close(ours(decoder, codes), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_serving_keeps_the_upsampling_activations_time_major(dtype: torch.dtype) -> None:
    # stored (batch, time, channels): what oneDNN's convolutions take without reordering, and
    # what lets the upsampling's phases interleave without a copy
    codec = random_codec(**MUSICGEN_SMALL_CODEC)
    decoder = EncodecAudioDecoder.from_transformers(codec)
    decoder.prepare_to_serve(dtype)
    layouts: list[tuple[str, bool]] = []
    for layer in decoder.upsample_layers:
        layer.register_forward_hook(
            lambda module, _, out: layouts.append((type(module).__name__, out.transpose(1, 2).is_contiguous()))
        )
    upsamplers = [m for m in decoder.modules() if isinstance(m, TrimmedConvTranspose1d)]
    assert all(m.time_major_weight is not None for m in upsamplers)
    with torch.inference_mode():
        audio = decoder.decode(random_codes(codec, batch=1, frames=20))
    assert audio.shape == (1, 1, 20 * decoder.hop_length)
    assert {name for name, _ in layouts} >= {"TrimmedConvTranspose1d", "ResidualBlock"}
    assert all(time_major for _, time_major in layouts), layouts


@pytest.mark.parametrize("overrides", CODEC_VARIANTS)
@pytest.mark.parametrize("frames", [1, 5])
def test_other_codec_variants_match_transformers(overrides: dict[str, Any], frames: int) -> None:
    codec = random_codec(**(SMALL_CODEC | overrides))
    decoder = EncodecAudioDecoder.from_transformers(codec)
    codes = random_codes(codec, batch=2, frames=frames)
    assert torch.equal(ours(decoder, codes), reference(codec, codes))


@pytest.mark.parametrize("overrides", [{}, *CODEC_VARIANTS])
@pytest.mark.parametrize("frames", [1, 5, 40])
def test_serving_in_float32_matches_transformers_up_to_rounding(overrides: dict[str, Any], frames: int) -> None:
    codec = random_codec(**(SMALL_CODEC | overrides))
    decoder = EncodecAudioDecoder.from_transformers(codec)
    decoder.prepare_to_serve(torch.float32)
    convolutions = [m for m in decoder.modules() if isinstance(m, PaddedConv1d)]
    assert any(conv.pads_in_convolution for conv in convolutions) != codec.config.use_causal_conv
    upsamplers = [m for m in decoder.modules() if isinstance(m, TrimmedConvTranspose1d)]
    assert upsamplers
    assert all(m.phase_weight is not None for m in upsamplers)  # EnCodec's kernels are twice the stride
    codes = random_codes(codec, batch=2, frames=frames)
    expected = reference(codec, codes)
    torch.testing.assert_close(ours(decoder, codes), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def loaded_kernels() -> NativeKernels:
    """The best build this CPU runs (every build is held to the plain reference in tests/native)."""
    kernels = runtime.best()
    assert kernels is not None
    return kernels


@pytest.mark.parametrize("overrides", [{}, *CODEC_VARIANTS])
@pytest.mark.parametrize("frames", [1, 5, 40])
def test_native_convolutions_in_float32_stay_close_to_transformers(overrides: dict[str, Any], frames: int) -> None:
    kernels = loaded_kernels()
    codec = random_codec(**(SMALL_CODEC | overrides))
    decoder = EncodecAudioDecoder.from_transformers(codec)
    decoder.prepare_to_serve(torch.float32)
    decoder.run_convolutions_with(lambda weight, bias, dilation: NativeConvolution(weight, bias, dilation, kernels))
    layers = list(decoder.upsample_layers.modules())
    convolutions = [m for m in layers if isinstance(m, PaddedConv1d | TrimmedConvTranspose1d)]
    assert convolutions
    assert all(m.native is not None for m in convolutions)
    # every ELU of the upsampling is applied by the convolution after it
    assert not any(isinstance(m, nn.ELU) for m in layers)
    sequences = [m for m in layers if isinstance(m, nn.Sequential)]
    folded = [layer for sequence in sequences for layer in sequence if isinstance(layer, nn.Identity)]
    assert len(folded) == sum(m.elu_alpha is not None for m in convolutions) > 0
    codes = random_codes(codec, batch=2, frames=frames)
    expected = reference(codec, codes)
    noise = (ours(decoder, codes) - expected).pow(2).mean() / expected.pow(2).mean()
    assert -10 * torch.log10(noise) > 50


def test_native_convolutions_need_a_decoder_serving_in_float32() -> None:
    decoder = EncodecAudioDecoder.from_transformers(random_codec(**SMALL_CODEC))
    decoder.prepare_to_serve(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        decoder.run_convolutions_with(lambda weight, bias, dilation: None)


def test_a_native_convolution_too_short_to_mirror_runs_in_torch_with_its_elu() -> None:
    layer = PaddedConv1d(nn.Conv1d(64, 16, 7), causal=False, pad_mode="reflect")
    x = torch.randn(1, 64, 3)  # a mirrored padding of 3 needs 4 steps
    with torch.inference_mode():
        expected = layer(F.elu(x))
    layer.native = NativeConvolution(layer.conv.weight.detach(), layer.conv.bias, 1, loaded_kernels())
    layer.elu_alpha = 1.0
    with torch.inference_mode():
        assert torch.equal(layer(x), expected)
        longer = torch.randn(1, 64, 9)
        natively = layer(longer)
        layer.native = None
        in_torch = layer(longer)
    torch.testing.assert_close(natively, in_torch, rtol=0, atol=1e-3 * float(in_torch.abs().max()))


@pytest.mark.parametrize("overrides", [{}, *CODEC_VARIANTS])
def test_a_chunk_with_its_context_frames_upsamples_to_the_whole_clips_audio(overrides: dict[str, Any]) -> None:
    codec = random_codec(**(SMALL_CODEC | overrides))
    decoder = EncodecAudioDecoder.from_transformers(codec)
    decoder.prepare_to_serve(torch.float32)
    hop, context = decoder.hop_length, decoder.context_frames
    with torch.inference_mode():
        hidden = decoder.frames(random_codes(codec, batch=1, frames=40))
        whole = decoder.upsample(hidden)[..., 10 * hop : 30 * hop]

        def chunk(context: int) -> torch.Tensor:
            return decoder.upsample(hidden[..., 10 - context : 30 + context])[..., context * hop : (20 + context) * hop]

        torch.testing.assert_close(chunk(context), whole, rtol=0, atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize("overrides", [{}, *CODEC_VARIANTS])
def test_context_frames_is_as_far_as_a_frame_reaches(overrides: dict[str, Any]) -> None:
    # in float64, audio that does not depend on the changed frame comes out bit for bit the same
    codec = random_codec(**(SMALL_CODEC | overrides))
    decoder = EncodecAudioDecoder.from_transformers(codec).double()
    decoder.compute_dtype = torch.float64
    with torch.inference_mode():
        hidden = decoder.frames(random_codes(codec, batch=1, frames=40)).double()
        changed = hidden.clone()
        changed[..., 20] += 1.0
        audio, moved = (decoder.output_layers(decoder.upsample_layers(x)) for x in (hidden, changed))
        reached = (moved != audio).nonzero()[:, -1] // decoder.hop_length
    assert max(20 - int(reached.min()), int(reached.max()) - 20) == decoder.context_frames


def test_the_32khz_codec_upsamples_within_a_frame_each_side() -> None:
    decoder = EncodecAudioDecoder.from_transformers(random_codec(**MUSICGEN_SMALL_CODEC))
    assert decoder.context_frames == 1


def test_decode_is_upsample_of_frames(tiny_codec: Any) -> None:
    decoder = EncodecAudioDecoder.from_transformers(tiny_codec)
    codes = random_codes(tiny_codec, batch=2, frames=9)
    with torch.inference_mode():
        hidden = decoder.frames(codes)
        assert hidden.shape[-1] == 9
        assert torch.equal(decoder.upsample(hidden), decoder.decode(codes))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"norm_type": "time_group_norm"}, "norm_type"),
        ({"chunk_length_s": 1.0, "overlap": 0.01}, "chunk"),
    ],
)
def test_unsupported_configs_are_refused(overrides: dict[str, Any], match: str) -> None:
    codec = random_codec(**(SMALL_CODEC | overrides))
    with pytest.raises(NotImplementedError, match=match):
        EncodecAudioDecoder.from_transformers(codec)


def test_codes_must_be_one_chunk(tiny_codec: Any) -> None:
    decoder = EncodecAudioDecoder.from_transformers(tiny_codec)
    with pytest.raises(ValueError, match="shape"):
        decoder.decode(torch.zeros(2, 1, 4, 3, dtype=torch.long))


def test_pickled_decoder_works_without_transformers(tiny_codec: Any, tmp_path: Path) -> None:
    with torch.inference_mode():
        decoder = EncodecAudioDecoder.from_transformers(tiny_codec)
    codes = random_codes(tiny_codec, batch=2, frames=11)
    torch.save({"decoder": decoder, "codes": codes, "expected": reference(tiny_codec, codes)}, tmp_path / "dec.pt")
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        saved = torch.load({str(tmp_path / "dec.pt")!r}, weights_only=False)
        with torch.inference_mode():
            audio = saved["decoder"].decode(saved["codes"])
        assert torch.equal(audio, saved["expected"]), "decoded audio differs"
        assert "transformers" not in sys.modules, "transformers was imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
