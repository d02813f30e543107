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


def self_attention_only_layer(hidden: int, sharpness: float) -> LayerWeights:
    """A layer that adds its self-attention to the residual and nothing else: LayerNorms without
    weights, queries `sharpness` times the normed row, keys and values the normed row itself, an
    identity output projection, and zero cross-attention and feed-forward products."""
    eye, zeros = torch.eye(hidden), torch.zeros(hidden, hidden)
    return LayerWeights(
        norms=(nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)),
        qkv=Int8Linear(torch.cat([sharpness * eye, eye, eye]), None),
        out=Int8Linear(eye, None),
        cross_q=Int8Linear(zeros, None),
        cross_out=Int8Linear(zeros, None),
        fc1=Int8Linear(zeros, None),
        fc2=Int8Linear(zeros, None),
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


def folded_rows(folded: FoldedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """The fold's int8 keys and values as rows (heads * length, hidden), unpacked."""
    tiles, heads, groups, tile, group = (int(size) for size in folded.values.shape)
    length, hidden = folded.keys.out_features // heads, folded.keys.in_features
    values = folded.values.permute(1, 2, 4, 0, 3).reshape(heads, groups * group, tiles * tile)
    return folded.keys.int8_weight(), values[:, :length, :hidden].reshape(heads * length, hidden)
