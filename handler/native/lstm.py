"""An `nn.LSTM` run by the native kernel (`srm_lstm`): EnCodec's decoder has one, and its step
streams the whole recurrent matrix (16 MB in float32 for the 32 kHz codec) once per frame, so in
torch it took a third of a clip's audio decode."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from handler.native.convolution import NativeConvolution
from handler.native.packing import Int8Linear, int8_matmul_saturates
from handler.native.runtime import NativeKernels


class NativeLSTM:
    """`lstm(x)[0]` for a unidirectional, time-major `lstm` without projections: the input products
    of all steps in one matrix product per layer (in torch in the LSTM's dtype, or for a float32
    one in int8 as `Int8Linear.forward` computes it where the CPU's int8 product is exact in one
    pass, else in int16 by `NativeConvolution` where the build has its kernel), the recurrence
    in `srm_lstm` with the recurrent weights in int8 (one scale per gate row, the decoder's `int8`
    numerics), every sequence of the batch in one pass (each step streams the recurrent weights
    once for them all)."""

    def __init__(self, lstm: nn.LSTM, kernels: NativeKernels) -> None:
        if not self.supports(lstm):
            raise ValueError("only unidirectional, time-major LSTMs without projections run natively")
        self.kernels = kernels
        self.layers: list[tuple[Callable[[torch.Tensor], torch.Tensor], Int8Linear]] = []
        for index in range(lstm.num_layers):
            weights = {name: getattr(lstm, f"{name}_l{index}").detach() for name in ("weight_ih", "weight_hh")}
            bias = None
            if lstm.bias:
                bias = (getattr(lstm, f"bias_ih_l{index}") + getattr(lstm, f"bias_hh_l{index}")).detach().float()
            products: Callable[[torch.Tensor], torch.Tensor]
            if weights["weight_ih"].dtype == torch.float32 and not int8_matmul_saturates():
                # float32 where the CPU has no bf16 products: in int8 where its int8 product is
                # exact in one pass (VNNI), the LSTM ~1.5x faster (110 -> 73 ms for 10 s of the
                # 32 kHz codec), ~75 dB from float32 at EnCodec's output.
                products = Int8Linear(weights["weight_ih"], bias)
            elif weights["weight_ih"].dtype == torch.float32 and NativeConvolution.serves_on(kernels):
                # AVX2 alone: in 16 bits through the convolution kernel (one tap), ~1.7x float32's
                # products (the exact int8 product takes two passes there and was slower)
                convolution = NativeConvolution(weights["weight_ih"].unsqueeze(-1), bias, 1, kernels)
                products = partial(_products_by_convolution, convolution)
            else:
                # bfloat16 where EnCodec serves in it (its LSTM weights are already rounded to it),
                # ~3x faster than float32 there
                products = partial(_products_in_dtype, weights["weight_ih"].t().contiguous(), bias)
            self.layers.append((products, Int8Linear(weights["weight_hh"].float(), None)))

    @staticmethod
    def supports(lstm: nn.LSTM) -> bool:
        """Whether `lstm` has the shape this class runs."""
        return not lstm.bidirectional and not lstm.batch_first and lstm.proj_size == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(time, batch, input) -> the last layer's h (time, batch, hidden), in x's dtype."""
        # contiguous: a strided input (EnCodec hands over a transposed view) made the first product 10x slower
        hidden = x.float().contiguous()
        for products, recurrent in self.layers:
            # one 2-D product: torch's matmul of a (time, batch, input) tensor whose size-1 batch
            # has an odd stride expanded the weight for every time step
            gates = products(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)
            hidden = self.kernels.lstm_layer(recurrent, gates)
        return hidden.to(x.dtype)


def _products_in_dtype(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """`rows @ weight` in the weight's dtype, plus `bias`, in float32."""
    gates = torch.mm(rows.to(weight.dtype), weight).float()
    return gates if bias is None else gates.add_(bias)


def _products_by_convolution(convolution: NativeConvolution, rows: torch.Tensor) -> torch.Tensor:
    """`rows` (steps, input) through a one-tap `convolution`: (steps, output) float32."""
    return convolution(rows.float().unsqueeze(0).transpose(1, 2), 0, 0, False)[0]
