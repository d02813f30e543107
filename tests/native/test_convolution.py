"""EnCodec's convolutions in 16-bit integers (`srm_conv` through `NativeConvolution`) against torch's
float32 and the plain-C reference, on every build this CPU runs."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from handler.native.build import PLAIN
from handler.native.convolution import MIN_CHANNELS, NativeConvolution
from handler.native.packing import CONV_CHUNK, CONV_WEIGHT_MAX, PackedConvolution
from handler.native.runtime import NativeKernels

SHAPES = [
    # (in channels, out channels, taps, dilation, steps, mirrored padding)
    (64, 32, 3, 1, 200, True),  # a residual block's first convolution
    (300, 40, 3, 3, 50, True),  # chunks of 128, 128 and 44 channels; dilated; 40 outputs: a part block
    (64, 20, 1, 1, 13, False),  # one tap: a short last tile (13 = 2 * 6 + 1)
    (6, 5, 7, 1, 30, False),  # few channels, many taps
    (5, 16, 2, 1, 9, False),  # an odd number of channels: the pair's second input zero
]


def snr_db(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(10 * torch.log10(expected.pow(2).mean() / (actual - expected).pow(2).mean()))


def case(channels: int, outputs: int, taps: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A weight, a bias and an input (1, channels, steps) stored time-major, as EnCodec's are."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(outputs, channels, taps, generator=generator) / (channels * taps) ** 0.5
    bias = torch.randn(outputs, generator=generator)
    x = torch.randn(1, steps, channels, generator=generator).transpose(1, 2)
    return weight, bias, x


def paddings(taps: int, dilation: int) -> tuple[int, int]:
    span = (taps - 1) * dilation
    return span - span // 2, span // 2


def torch_convolution(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int, reflect: bool, elu: bool
) -> torch.Tensor:
    """What the kernel computes, in float32: (batch, time, out)."""
    left, right = paddings(int(weight.shape[2]), dilation)
    x = F.elu(x) if elu else x
    padded = F.pad(x, (left, right), "reflect" if reflect else "constant")
    return F.conv1d(padded, weight, bias, dilation=dilation).transpose(1, 2)


@pytest.mark.parametrize(("channels", "outputs", "taps", "dilation", "steps", "reflect"), SHAPES)
@pytest.mark.parametrize("elu", [False, True])
def test_matches_torch_float32_to_16_bit_rounding(
    kernels: NativeKernels, channels: int, outputs: int, taps: int, dilation: int, steps: int, reflect: bool, elu: bool
) -> None:
    weight, bias, x = case(channels, outputs, taps, steps)
    left, right = paddings(taps, dilation)
    got = NativeConvolution(weight, bias, dilation, kernels)(x, left, right, reflect, 1.0 if elu else None)
    expected = torch_convolution(x, weight, bias, dilation, reflect, elu)
    assert got.shape == expected.shape
    assert snr_db(got, expected) > 60  # ~70 dB: 12-bit weights, 14-bit inputs per time step


@pytest.mark.parametrize(("channels", "outputs", "taps", "dilation", "steps", "reflect"), SHAPES)
def test_builds_agree_with_the_plain_reference_bit_for_bit(
    kernels: NativeKernels,
    reference: NativeKernels,
    channels: int,
    outputs: int,
    taps: int,
    dilation: int,
    steps: int,
    reflect: bool,
) -> None:
    weight, bias, x = case(channels, outputs, taps, steps, seed=1)
    left, right = paddings(taps, dilation)
    for elu in (None, 0.5):
        got = NativeConvolution(weight, bias, dilation, kernels)(x, left, right, reflect, elu)
        expected = NativeConvolution(weight, bias, dilation, reference)(x, left, right, reflect, elu)
        assert torch.equal(got, expected)


def test_mirrored_edges_read_the_inputs_mirrored(kernels: NativeKernels) -> None:
    weight, bias, x = case(64, 16, 7, 40)
    got = NativeConvolution(weight, bias, 1, kernels)(x, 3, 3, reflect=True)
    expected = torch_convolution(x, weight, bias, 1, reflect=True, elu=False)
    # the three outputs each side that read the padding, as close as the middle ones
    for edge in (slice(0, 3), slice(-3, None)):
        assert snr_db(got[:, edge], expected[:, edge]) > 60


def test_inputs_read_in_any_layout(kernels: NativeKernels) -> None:
    weight, bias, x = case(64, 16, 3, 30)
    conv = NativeConvolution(weight, bias, 1, kernels)
    assert torch.equal(conv(x.contiguous(), 1, 1, reflect=False), conv(x, 1, 1, reflect=False))


def test_sums_past_int32_do_not_wrap(kernels: NativeKernels) -> None:
    # 1024 channels of the largest input times the largest weight: 1024 * 8191 * 2047 > 2^31,
    # summed exactly by chunks of 128 and rescaled in float32
    assert 1024 * 8191 * CONV_WEIGHT_MAX > 2**31
    assert CONV_CHUNK * 8191 * CONV_WEIGHT_MAX < 2**31
    weight, x = torch.ones(16, 1024, 1), torch.full((1, 1024, 6), 3.0)
    got = NativeConvolution(weight, None, 1, kernels)(x, 0, 0, reflect=False)
    torch.testing.assert_close(got, torch.full((1, 6, 16), 3.0 * 1024), rtol=1e-6, atol=0)


def test_silent_steps_give_the_bias(kernels: NativeKernels) -> None:
    weight, bias, _ = case(64, 16, 3, 10)
    got = NativeConvolution(weight, bias, 1, kernels)(torch.zeros(1, 64, 10), 1, 1, reflect=True)
    assert torch.equal(got, bias.expand(1, 10, 16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_step_that_is_not_finite_makes_the_outputs_that_read_it_nan(kernels: NativeKernels, bad: float) -> None:
    weight, bias, x = case(64, 16, 3, 20)
    conv = NativeConvolution(weight, bias, 1, kernels)
    broken = x.clone()
    broken[0, 5, 10] = bad
    got, clean = conv(broken, 1, 1, reflect=False), conv(x, 1, 1, reflect=False)
    reads_it = torch.zeros(20, dtype=torch.bool)
    reads_it[9:12] = True  # three taps, one step of padding each side: outputs 9, 10 and 11
    assert got[0, reads_it].isnan().all()
    assert torch.equal(got[0, ~reads_it], clean[0, ~reads_it])


def test_mirrored_padding_needs_more_steps_than_it_pads(kernels: NativeKernels) -> None:
    weight, bias, x = case(64, 16, 7, 3)
    with pytest.raises(ValueError, match="mirrored padding"):
        NativeConvolution(weight, bias, 1, kernels)(x, 3, 3, reflect=True)


def test_the_wrong_number_of_channels_is_refused(kernels: NativeKernels) -> None:
    weight, bias, x = case(64, 16, 3, 10)
    with pytest.raises(ValueError, match="channels"):
        NativeConvolution(weight, bias, 1, kernels)(x[:, :32], 1, 1, reflect=False)


def test_packed_weights_are_within_half_a_step_of_the_weights() -> None:
    weight, bias, _ = case(33, 20, 3, 1)
    packed = PackedConvolution(weight, bias, 1)
    step = weight.abs().amax(dim=(1, 2), keepdim=True) / CONV_WEIGHT_MAX
    assert bool(((packed.dequantized() - weight).abs() <= step / 2 + 1e-7).all())
    assert packed.padded_outputs == 32
    assert packed.padded_channels == 34


def test_only_the_tuned_builds_serve_it_and_only_from_enough_channels(kernels: NativeKernels) -> None:
    assert NativeConvolution.serves_on(kernels) == (kernels.variant.dots in ("avx2", "avxvnni", "avx512vnni"))
    assert kernels.variant.name != PLAIN.name or not NativeConvolution.serves_on(kernels)
    weight, bias, _ = case(MIN_CHANNELS, 16, 1, 1)
    assert NativeConvolution.where_faster(weight, bias, 1, kernels) is not None
    assert NativeConvolution.where_faster(weight[:, : MIN_CHANNELS // 2], bias, 1, kernels) is None
