"""EnCodec's ELU in the native kernel (`srm_elu` through `NativeELU`) against torch's, on every
build this CPU runs."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from handler.native.elu import NativeELU
from handler.native.runtime import NativeKernels, rows_of

BF16_ROUNDING = 2**-8
"""One bfloat16 rounding, relative: where the kernel's float result and torch's round apart."""


@pytest.fixture
def values() -> torch.Tensor:
    """(2, 3, 700): both signs, zeros, values tiny enough for expm1's cancellation and past exp's range."""
    x = torch.randn(2, 3, 700, generator=torch.Generator().manual_seed(0)) * 4
    x[0, 0, :6] = torch.tensor([0.0, -0.0, -1e-7, 1e-7, -100.0, 100.0])
    return x


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_float32_matches_torch(kernels: NativeKernels, values: torch.Tensor, alpha: float) -> None:
    got = NativeELU(alpha, kernels)(values)
    torch.testing.assert_close(got, F.elu(values, alpha), rtol=1e-6, atol=1e-7)


def test_bfloat16_matches_torch_to_its_rounding(kernels: NativeKernels, values: torch.Tensor) -> None:
    x = values.bfloat16()
    got = NativeELU(1.0, kernels)(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), F.elu(x).float(), rtol=BF16_ROUNDING, atol=0)


def test_bfloat16_in_float32_out_is_the_float_elu_of_the_input(kernels: NativeKernels, values: torch.Tensor) -> None:
    x = values.bfloat16()
    got = NativeELU(1.0, kernels, dtype=torch.float32)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.elu(x.float()), rtol=1e-6, atol=1e-7)


def test_builds_agree_with_the_plain_reference(
    kernels: NativeKernels, reference: NativeKernels, values: torch.Tensor
) -> None:
    torch.testing.assert_close(NativeELU(1.0, kernels)(values), NativeELU(1.0, reference)(values), rtol=1e-6, atol=1e-7)


def test_in_place_writes_the_input_and_nothing_around_a_trimmed_view(
    kernels: NativeKernels, values: torch.Tensor
) -> None:
    whole = values.clone()
    view = whole[..., 3:-5]  # rows evenly spaced, not contiguous: no copy needed
    assert rows_of(view) == 700
    expected = F.elu(view)
    got = NativeELU(1.0, kernels, inplace=True)(view)
    assert got.data_ptr() == view.data_ptr()
    torch.testing.assert_close(view, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(whole[..., :3], values[..., :3])
    assert torch.equal(whole[..., -5:], values[..., -5:])


def test_out_of_place_leaves_the_input_alone(kernels: NativeKernels, values: torch.Tensor) -> None:
    x = values.clone()
    NativeELU(1.0, kernels)(x)
    assert torch.equal(x, values)


def test_nan_and_infinities(kernels: NativeKernels) -> None:
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), -3.0])
    for dtype in (torch.float32, torch.bfloat16):
        got = NativeELU(0.5, kernels)(x.to(dtype)).float()
        assert got[0].isnan()
        assert got[1] == float("inf")
        assert got[2] == -0.5
        assert abs(float(got[3]) - 0.5 * (torch.tensor(-3.0).exp() - 1)) < 1e-3


def test_rows_that_are_not_evenly_spaced_are_copied_first(kernels: NativeKernels, values: torch.Tensor) -> None:
    x = values[..., ::2]  # every other element: no row is contiguous
    assert rows_of(x) is None
    torch.testing.assert_close(NativeELU(1.0, kernels)(x), F.elu(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("inplace", [False, True])
def test_activations_stored_time_major_keep_their_layout(
    kernels: NativeKernels, values: torch.Tensor, inplace: bool
) -> None:
    # (batch, channels, time) stored as (batch, time, channels), as EnCodec's serving upsampler
    # keeps them: one pass over the memory, no copy, the output stored the same way
    x = values.transpose(1, 2).contiguous().transpose(1, 2)
    assert rows_of(x) is None
    expected = F.elu(x)
    got = NativeELU(1.0, kernels, inplace=inplace)(x)
    assert got.stride() == x.stride()
    assert (got.data_ptr() == x.data_ptr()) == inplace
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    widened = NativeELU(1.0, kernels, dtype=torch.float32)(
        values.bfloat16().transpose(1, 2).contiguous().transpose(1, 2)
    )
    assert widened.dtype == torch.float32
    assert widened.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(widened, F.elu(values.bfloat16().float()), rtol=1e-6, atol=1e-7)


def test_other_dtypes_run_in_torch(kernels: NativeKernels, values: torch.Tensor) -> None:
    x = values.double()
    got = NativeELU(1.0, kernels)(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, F.elu(x))


def test_the_kernel_refuses_tensors_of_different_shapes(kernels: NativeKernels) -> None:
    with pytest.raises(ValueError, match="one shape"):
        kernels.elu(torch.zeros(4, 5), torch.zeros(4, 6), 1.0)


def test_only_float32_or_bfloat16_outputs() -> None:
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        NativeELU(1.0, None, dtype=torch.float16)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "spacing"),
    [
        (lambda: torch.zeros(2, 3, 10), 10),
        (lambda: torch.zeros(2, 3, 10)[..., 2:7], 10),
        (lambda: torch.zeros(2, 3, 10)[:, 1:2], 30),
        (lambda: torch.zeros(7), 7),
        (lambda: torch.zeros(2, 3, 10)[:, :2], None),
        (lambda: torch.zeros(2, 3, 10)[..., ::2], None),
    ],
)
def test_rows_of_is_the_spacing_of_evenly_spaced_rows(make: object, spacing: int | None) -> None:
    assert rows_of(make()) == spacing  # type: ignore[operator]
