"""int8 Linear layers for the parts of the model that run once per request (the text encoder)."""

import torch
from torch import nn

from handler.native import runtime
from handler.native.packing import Int8Linear


class KernelLinear(nn.Module):
    """An `Int8Linear` applied to any number of rows: through the native kernel's product where
    the library is built (it reads the weights as stored: nothing is unpacked per call or at
    load), else in torch."""

    def __init__(self, packed: Int8Linear) -> None:
        super().__init__()
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        kernels = runtime.best()
        out = kernels.linear(self.packed, rows) if kernels is not None else self.packed(rows)
        return out.view(*x.shape[:-1], self.packed.out_features).to(x.dtype)


def quantize_linears(module: nn.Module) -> None:
    """Replace every `nn.Linear` inside `module` by a `KernelLinear` of its weights."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, KernelLinear(Int8Linear.from_linear(child)))
