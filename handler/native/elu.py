"""`nn.ELU` run by the native kernel (`srm_elu`): EnCodec's upsampler applies one before every
convolution, and torch's took about as long as the convolutions in bfloat16."""

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from handler.musicgen.audio_decoder import stored_time_major
from handler.native.runtime import NativeKernels, rows_of

NATIVE_DTYPES = (torch.float32, torch.bfloat16)


class NativeELU(nn.Module):
    """ELU with `alpha`, in place where `inplace`, returning `dtype` (the input's when None): a
    bfloat16 input can come out float32 in the same pass. Rows that are not contiguous and evenly
    spaced are copied first; other dtypes run in torch."""

    def __init__(self, alpha: float, kernels: NativeKernels, inplace: bool = False, dtype: torch.dtype | None = None):
        super().__init__()
        if dtype is not None and dtype not in NATIVE_DTYPES:
            raise ValueError(f"NativeELU returns float32 or bfloat16, not {dtype}")
        self.alpha = alpha
        self.kernels = kernels
        self.inplace = inplace
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ELU of `x`."""
        dtype = self.dtype or x.dtype
        if x.dtype not in NATIVE_DTYPES or x.dim() == 0:
            return F.elu(x, self.alpha).to(dtype)
        if rows_of(x) is None and not stored_time_major(x):
            x = x.contiguous()
        # the same strides as x's, dense (torch's preserve_format)
        out = x if self.inplace and dtype == x.dtype else torch.empty_like(x, dtype=dtype)
        if rows_of(x) is None:  # stored time-major: elementwise, so one row of it all
            self.kernels.elu(x.transpose(-1, -2).view(1, -1), out.transpose(-1, -2).view(1, -1), self.alpha)
        else:
            self.kernels.elu(x, out, self.alpha)
        return out
