"""EnCodec's float32 convolutions run by the native kernel in 16-bit integers (`srm_conv`): where
the CPU has no bf16 products they were most of the audio decode, and AVX2's `vpmaddwd` does
twice the multiply-adds a cycle of its float32 FMA. Weights get one scale per output channel
(`PackedConvolution`), inputs one per time step (the audio's loud and quiet passages keep the same
relative precision); the sums are exact in int32 by chunks of channels, then rescaled in float32."""

import torch

from handler.native.packing import PackedConvolution
from handler.native.runtime import NativeKernels

CONVOLUTION_DOTS = frozenset({"avx2", "avxvnni", "avx512vnni"})
"""The builds with a tuned `conv_tile`: elsewhere (the plain reference, NEON) float32 stays in torch."""
MIN_CHANNELS = 64
"""Input channels from which the kernel beats torch's float32: with 32 (EnCodec's last one-tap
convolution, 64000 steps a chunk) each tile's setup and rescales outweighed its 16 pairs of
channels, and it took 1.5x torch's time."""


class NativeConvolution:
    """A stride-1 convolution of inputs (batch, channels, time) stored time-major, run by
    `srm_conv`: each call pads (zeros, or mirrored where `reflect`), optionally applies an ELU
    with `elu_alpha` first (fused into the quantisation: EnCodec puts one before most of its
    convolutions), and returns (batch, time, out) float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, kernels: NativeKernels) -> None:
        self.packed = PackedConvolution(weight, bias, dilation)
        self.kernels = kernels

    @staticmethod
    def serves_on(kernels: NativeKernels) -> bool:
        """Whether `kernels` run it faster than torch's float32 (a build with its own `conv_tile`)."""
        return kernels.variant.dots in CONVOLUTION_DOTS

    @classmethod
    def where_faster(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, kernels: NativeKernels
    ) -> "NativeConvolution | None":
        """The convolution, or None where torch's float32 is as fast (few input channels)."""
        return cls(weight, bias, dilation, kernels) if int(weight.shape[1]) >= MIN_CHANNELS else None

    def __call__(
        self, x: torch.Tensor, pad_left: int, pad_right: int, reflect: bool, elu_alpha: float | None = None
    ) -> torch.Tensor:
        """The convolution of `x` padded by `pad_left` and `pad_right` time steps."""
        return self.kernels.convolve(self.packed, x, pad_left, pad_right, reflect, elu_alpha)
