"""One MusicGen decoder layer, its Linear layers fused and packed for decoding."""

from typing import Any

import torch
from torch import nn

from handler.musicgen.text_encoder import shared_linear
from handler.native.packing import Int4Linear, Int8Linear, LayerWeights
from handler.settings import QUANTIZED, Precision


def fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    """Concatenate Linear layers sharing an input along the output dim (frees nothing itself)."""
    w = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    has_bias = all(lin.bias is not None for lin in linears)
    fused = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=False)
    if has_bias:
        b = torch.cat([lin.bias.detach() for lin in linears if lin.bias is not None], dim=0)
        fused.bias = nn.Parameter(b, requires_grad=False)
    return fused


def convert_linears(module: nn.Module, precision: Precision, heads: bool = False) -> None:
    """Put `module`'s direct Linear children in `precision`: packed for the native step when
    quantized (the codebook `heads` always int8: they make the logits themselves, and are 2%
    of a step's weights), bfloat16 for bf16, unchanged for fp32."""
    if precision in QUANTIZED:
        packed = Int4Linear if precision == "int4" and not heads else Int8Linear
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, packed.from_linear(child))
    elif precision == "bf16":
        module.to(torch.bfloat16)


class DecoderLayer(nn.Module):
    """Weights of one decoder layer, rearranged for decoding: self-attention's q/k/v fused into
    one product (`qkv`), cross-attention's keys and values into another (`xkv`)."""

    ln1: nn.Module
    qkv: nn.Module
    o: nn.Module
    ln2: nn.Module
    xq: nn.Module
    xkv: nn.Module
    xo: nn.Module
    ln3: nn.Module
    fc1: nn.Module
    fc2: nn.Module
    act: nn.Module

    @classmethod
    def from_transformers(cls, layer: Any) -> "DecoderLayer":
        """From a transformers ``MusicgenDecoderLayer``, sharing its weights (fused ones are new)."""
        module = cls()
        sa, ca = layer.self_attn, layer.encoder_attn
        module.ln1 = layer.self_attn_layer_norm
        module.qkv = fuse_linears([sa.q_proj, sa.k_proj, sa.v_proj])
        module.o = shared_linear(sa.out_proj)
        module.ln2 = layer.encoder_attn_layer_norm
        module.xq = shared_linear(ca.q_proj)
        module.xkv = fuse_linears([ca.k_proj, ca.v_proj])
        module.xo = shared_linear(ca.out_proj)
        module.ln3 = layer.final_layer_norm
        module.fc1 = shared_linear(layer.fc1)
        module.fc2 = shared_linear(layer.fc2)
        # torch's own GELU where it is one: the engine then holds no transformers objects.
        gelu = type(layer.activation_fn).__name__ == "GELUActivation"
        module.act = nn.GELU() if gelu else layer.activation_fn
        return module

    def native_weights(self) -> LayerWeights:
        """The layer as the native step reads it (its Linear layers packed)."""
        return LayerWeights(
            norms=(self.ln1, self.ln2, self.ln3),  # type: ignore[arg-type]
            qkv=self.qkv,  # type: ignore[arg-type]
            out=self.o,  # type: ignore[arg-type]
            cross_q=self.xq,  # type: ignore[arg-type]
            cross_out=self.xo,  # type: ignore[arg-type]
            fc1=self.fc1,  # type: ignore[arg-type]
            fc2=self.fc2,  # type: ignore[arg-type]
        )
