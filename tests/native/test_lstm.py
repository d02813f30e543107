"""EnCodec's LSTM in the native kernel (`srm_lstm` through `NativeLSTM`) against torch's `nn.LSTM`,
on every build this CPU runs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from handler.native.lstm import NativeLSTM
from handler.native.packing import Int8Linear, int8_matmul_saturates
from handler.native.runtime import NativeKernels

ROOT = Path(__file__).resolve().parents[2]

HELD_TO_AVX2 = textwrap.dedent("""
    import torch
    from torch import nn
    from handler.native import runtime
    from handler.native.convolution import NativeConvolution
    from handler.native.lstm import NativeLSTM
    from handler.native.packing import int8_matmul_saturates
    kernels = runtime.best()
    torch.manual_seed(0)
    lstm = nn.LSTM(128, 64, num_layers=2).eval()
    native = NativeLSTM(lstm, kernels)
    x = torch.randn(40, 1, 128)
    with torch.inference_mode():
        expected, got = lstm(x)[0], native(x)
    snr = float(10 * torch.log10(expected.pow(2).sum() / (got - expected).pow(2).sum()))
    names = [getattr(getattr(products, "func", None), "__name__", "") for products, _ in native.layers]
    by_convolution = [name == "_products_by_convolution" for name in names]
    print(int8_matmul_saturates(), NativeConvolution.serves_on(kernels), all(by_convolution), snr)
""")
"""A float32 LSTM where torch's int8 product saturates (oneDNN held to AVX2: it reads the cap at
its start, so in a fresh process)."""


def snr_db(reference: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (got - reference).pow(2).sum()))


@pytest.fixture
def lstm() -> nn.LSTM:
    torch.manual_seed(0)
    return nn.LSTM(48, 64, num_layers=2).eval()


def test_native_lstm_matches_torch(kernels: NativeKernels, lstm: nn.LSTM) -> None:
    x = torch.randn(30, 2, 48)
    with torch.inference_mode():
        expected = lstm(x)[0]
        got = NativeLSTM(lstm, kernels)(x)
    assert got.shape == expected.shape == (30, 2, 64)
    # int8 recurrent weights and h: the decoder's numerics, ~50 dB from float32 here
    assert snr_db(expected, got) > 40
    # each sequence of the batch on its own: the same as in the batch
    with torch.inference_mode():
        alone = NativeLSTM(lstm, kernels)(x[:, 1:])
    torch.testing.assert_close(alone, got[:, 1:])


def test_a_batch_past_one_call_s_rows_is_each_sequence_alone(kernels: NativeKernels, lstm: nn.LSTM) -> None:
    x = torch.randn(6, 10, 48)  # more sequences than one call of the kernel takes (MAX_ROWS)
    with torch.inference_mode():
        got = NativeLSTM(lstm, kernels)(x)
        for b in (0, 8, 9):
            torch.testing.assert_close(NativeLSTM(lstm, kernels)(x[:, b : b + 1]), got[:, b : b + 1])


def test_a_strided_input_gives_what_a_contiguous_one_does(kernels: NativeKernels, lstm: nn.LSTM) -> None:
    # EnCodec's serving layers hand over (time, 1, input) with the batch's stride past the end
    x = torch.randn(1, 48, 25).transpose(1, 2).contiguous().transpose(1, 2).permute(2, 0, 1)
    assert x.stride() == (48, 25 * 48, 1)
    with torch.inference_mode():
        torch.testing.assert_close(
            NativeLSTM(lstm, kernels)(x), NativeLSTM(lstm, kernels)(x.clone(memory_format=torch.contiguous_format))
        )


def test_builds_agree_with_the_plain_reference(kernels: NativeKernels, reference: NativeKernels, lstm: nn.LSTM) -> None:
    x = torch.randn(25, 1, 48)
    with torch.inference_mode():
        torch.testing.assert_close(NativeLSTM(lstm, kernels)(x), NativeLSTM(lstm, reference)(x), rtol=1e-4, atol=1e-5)


def test_a_float32_lstm_s_input_products_run_in_int8_where_exact_in_one_pass(
    kernels: NativeKernels, lstm: nn.LSTM
) -> None:
    in_int8 = not int8_matmul_saturates()
    assert all(isinstance(products, Int8Linear) == in_int8 for products, _ in NativeLSTM(lstm, kernels).layers)
    halved = nn.LSTM(48, 64, num_layers=2).eval().to(torch.bfloat16)
    assert not any(isinstance(products, Int8Linear) for products, _ in NativeLSTM(halved, kernels).layers)


def test_where_the_int8_product_saturates_a_float32_lstm_s_input_products_run_in_int16() -> None:
    environment = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    command = [sys.executable, "-c", HELD_TO_AVX2]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=True)
    saturates, tuned, by_convolution, snr = done.stdout.split()
    assert saturates == "True"
    assert by_convolution == tuned  # through the convolution kernel where the build has one
    assert float(snr) > 40


def test_input_dtype_is_kept(kernels: NativeKernels, lstm: nn.LSTM) -> None:
    x = torch.randn(10, 1, 48, dtype=torch.bfloat16)
    with torch.inference_mode():
        got = NativeLSTM(lstm, kernels)(x)
        expected = lstm(x.float())[0]
    assert got.dtype == torch.bfloat16
    assert snr_db(expected, got.float()) > 30  # bf16 rounding of the output on top


def test_a_layer_without_biases(kernels: NativeKernels) -> None:
    torch.manual_seed(1)
    lstm = nn.LSTM(16, 64, bias=False).eval()
    x = torch.randn(12, 1, 16)
    with torch.inference_mode():
        assert snr_db(lstm(x)[0], NativeLSTM(lstm, kernels)(x)) > 40


@pytest.mark.parametrize(
    "options",
    [{"bidirectional": True}, {"batch_first": True}, {"proj_size": 8}],
    ids=["bidirectional", "batch_first", "proj"],
)
def test_other_lstms_are_refused(kernels: NativeKernels, options: dict[str, object]) -> None:
    lstm = nn.LSTM(16, 32, **options)  # type: ignore[arg-type]
    assert not NativeLSTM.supports(lstm)
    with pytest.raises(ValueError, match="unidirectional"):
        NativeLSTM(lstm, kernels)
