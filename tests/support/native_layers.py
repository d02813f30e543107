"""Random decoder layers for the native step's tests, with and without folded cross-attention."""

import torch
from torch import nn

from handler.native.packing import FoldedCrossAttention, Int8Linear, LayerWeights, PackedLinear


def random_layer(hidden: int, ffn: int, packed: type[PackedLinear] = Int8Linear) -> LayerWeights:
    """One decoder layer of random weights, packed as `packed`, with biases everywhere."""

    def norm() -> nn.LayerNorm:
        ln = nn.LayerNorm(hidden)
        nn.init.normal_(ln.weight, 1.0, 0.1)
        nn.init.normal_(ln.bias, 0.0, 0.1)
        return ln

    def linear(out_features: int, in_features: int) -> PackedLinear:
        return packed(torch.randn(out_features, in_features) / in_features**0.5, torch.randn(out_features) * 0.1)

    return LayerWeights(
        norms=(norm(), norm(), norm()),
        qkv=linear(3 * hidden, hidden),
        out=linear(hidden, hidden),
        cross_q=linear(hidden, hidden),
        cross_out=linear(hidden, hidden),
        fc1=linear(ffn, hidden),
        fc2=linear(hidden, ffn),
    )


def without_cross_biases(layer: LayerWeights, packed: type[PackedLinear]) -> LayerWeights:
    """The layer with bias-free cross-attention projections, as MusicGen's (which can be folded)."""
    layer.cross_q = packed(layer.cross_q.dequantized_weight(), None)
    layer.cross_out = packed(layer.cross_out.dequantized_weight(), None)
    return layer


def fold(layer: LayerWeights, keys: torch.Tensor, values: torch.Tensor, heads: int) -> FoldedCrossAttention:
    """The first prompt's cross-attention keys and values (prompts, heads, length, head_dim) folded
    with `layer`'s projections."""
    hidden = int(keys.shape[1] * keys.shape[3])
    shape = (heads, hidden // heads, hidden)
    query, output = layer.cross_q.dequantized_weight(), layer.cross_out.dequantized_weight()
    return FoldedCrossAttention.fold(keys[0], values[0], query.reshape(shape), output.t().reshape(shape))
