"""Weights as the native kernels read them: packed int8 and int4 Linear layers, folded
cross-attention, EnCodec's convolutions in int16, and the block layout constants shared with `srm.h`."""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Self

import torch
from torch import nn

from handler.allocator import huge_page_tensor

BLOCK_N, BLOCK_N4, BLOCK_K, MAX_ROWS, KEY_TILE, MAX_HEAD_DIM = 4, 16, 64, 8, 32, 256

VALUE_GROUP = 4
"""Text positions the folded values hold side by side (see `FoldedCrossAttention`)."""
VALUE_WEIGHT_MAX = 127
"""The largest quantised weight of a folded value (the kernel's softmax weights in int8)."""

CONV_BLOCK_N = 16
"""Output channels a block of `PackedConvolution` holds: (n / 16, taps, channels / 2, 16, 2)."""
CONV_CHUNK = 128
"""Input channels of one tap summed exactly in int32 before their rescale."""
CONV_INPUT_MAX = 8191
"""The largest quantised input: 128 * 8191 * 2047 < 2^31, no chunk's sum can overflow."""
CONV_WEIGHT_MAX = 2047
"""The largest quantised weight."""
CONV_MAX_CHANNELS = 4096
"""The most input channels a convolution may have (the quantiser's row buffer)."""
C_CONSTANTS = {
    "SRM_BLOCK_N": BLOCK_N,
    "SRM_BLOCK_N4": BLOCK_N4,
    "SRM_BLOCK_K": BLOCK_K,
    "SRM_MAX_ROWS": MAX_ROWS,
    "SRM_KEY_TILE": KEY_TILE,
    "SRM_MAX_HEAD_DIM": MAX_HEAD_DIM,
    "SRM_VALUE_GROUP": VALUE_GROUP,
    "SRM_VALUE_WEIGHT_MAX": VALUE_WEIGHT_MAX,
    "SRM_CONV_BLOCK_N": CONV_BLOCK_N,
    "SRM_CONV_CHUNK": CONV_CHUNK,
    "SRM_CONV_INPUT_MAX": CONV_INPUT_MAX,
    "SRM_CONV_WEIGHT_MAX": CONV_WEIGHT_MAX,
    "SRM_CONV_MAX_CHANNELS": CONV_MAX_CHANNELS,
}
"""The constants above by their names in srm.h: a library compiled with other values is refused at
load (see `abi.check`)."""


class _PackedLinear(nn.Module):
    """What the packed layers share: built from an `nn.Linear`; `forward` is the kernel's
    arithmetic in torch (inputs quantised per row), used without the library."""

    weight: torch.Tensor  # packed: (out / block_n, in / 64, ...), zero padded
    bias: torch.Tensor | None
    streamed: tuple[str, ...] = ("weight",)
    """The buffers every decode step reads through (see `gather`)."""
    block_n = BLOCK_N
    """Output channels a block of the packed weights holds."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(s) for s in weight.shape)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(out, in) rounded up to the kernel's blocks."""
        return int(self.weight.shape[0]) * self.block_n, int(self.weight.shape[1]) * BLOCK_K

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Self:
        return cls(linear.weight, linear.bias)  # type: ignore[call-arg]

    def dequantized_weight(self) -> torch.Tensor:
        """The (out, in) weights as float32, as the kernel multiplies them."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, row_scale = quantize_rows(x.reshape(-1, self.in_features).float())
        y = (q.float() * row_scale) @ self.dequantized_weight().T
        if self.bias is not None:
            y = y + self.bias[: self.out_features]
        return y.view(*x.shape[:-1], self.out_features)


class Int8Linear(_PackedLinear):
    """A Linear layer as the native step stores it: int8 weights, one scale per output channel.

    Packed as (out / 4, in / 64, 4, 64) and zero padded, so the kernel streams it in order.
    """

    scale: torch.Tensor
    row_sum: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight)
        n, k = _round_up(self.out_features, BLOCK_N), _round_up(self.in_features, BLOCK_K)
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.zeros((n, k), dtype=torch.int8)
        q[: self.out_features, : self.in_features] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer(
            "weight", q.view(n // BLOCK_N, BLOCK_N, k // BLOCK_K, BLOCK_K).transpose(1, 2).contiguous()
        )
        self.register_buffer("scale", _padded(scale, n))
        self.register_buffer("row_sum", q.sum(dim=1, dtype=torch.int32))
        self.register_buffer("bias", None if bias is None else _padded(bias.detach().float(), n))

    @classmethod
    def from_packed(
        cls, weight: torch.Tensor, scale: torch.Tensor, row_sum: torch.Tensor, shape: tuple[int, int]
    ) -> Self:
        """A bias-free layer of `shape` (out, in) from buffers already quantised and packed as
        `__init__` packs them (the native fold's)."""
        linear = cls.__new__(cls)
        _PackedLinear.__init__(linear, torch.empty(shape, device="meta"))
        for name, buffer in (("weight", weight), ("scale", scale), ("row_sum", row_sum), ("bias", None)):
            linear.register_buffer(name, buffer)
        return linear

    def int8_weight(self) -> torch.Tensor:
        """The (out, in) int8 weights, unpacked."""
        n, k = self.padded_shape
        unpacked = self.weight.transpose(1, 2).reshape(n, k)
        return unpacked[: self.out_features, : self.in_features]

    def dequantized_weight(self) -> torch.Tensor:
        return self.int8_weight().float() * self.scale[: self.out_features, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's arithmetic exactly: inputs quantised per row, int8 products summed in int32
        (oneDNN's int8 matrix product: many rows at once, as a prefill has, run ~5x faster than
        through the kernel, which is built for a step's few), rescaled as the kernel rescales."""
        q, row_scale = quantize_rows(x.reshape(-1, self.in_features).float())
        sums = int8_matmul(q, self.int8_weight().contiguous().t())
        y = (row_scale * self.scale[: self.out_features]).mul_(sums)
        if self.bias is not None:
            y += self.bias[: self.out_features]
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(_PackedLinear):
    """A Linear layer with int4 weights and one bfloat16 scale per 64 inputs of each output channel.

    Half the bytes of `Int8Linear` for the step to stream. Each group's scale is the one, of a few
    near llama.cpp's Q4_0 choice (largest magnitude at -8), with the least squared error. Stored
    as weight + 8 and packed as (out / 16, in / 64, 8, 16, 4) bytes: byte (m, j, i) of a block and
    group holds input 8m + i of the block's channel j in its low nibble and input 8m + 4 + i in
    its high one, so each 64 bytes unpack to four consecutive inputs of 16 channels, a channel per
    32-bit lane (see srm_linear in srm.h). Scales are (out / 16, in / 64, 16).
    """

    group_scale: torch.Tensor
    streamed = ("weight", "group_scale")
    block_n = BLOCK_N4

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight)
        n, k = _round_up(self.out_features, BLOCK_N4), _round_up(self.in_features, BLOCK_K)
        groups = torch.zeros((n, k))
        groups[: self.out_features, : self.in_features] = weight.detach().float()
        q, scale = _int4_groups(groups.view(n, k // BLOCK_K, BLOCK_K))
        # (block, channel, group, run m, nibble, input i) -> (block, group, m, nibble, channel, i)
        nibbles = (q + 8).to(torch.uint8).view(n // BLOCK_N4, BLOCK_N4, k // BLOCK_K, 8, 2, 4).permute(0, 2, 3, 4, 1, 5)
        self.register_buffer("weight", (nibbles[:, :, :, 0] | (nibbles[:, :, :, 1] << 4)).contiguous())
        self.register_buffer(
            "group_scale", scale.view(n // BLOCK_N4, BLOCK_N4, k // BLOCK_K).transpose(1, 2).contiguous()
        )
        self.register_buffer("bias", None if bias is None else _padded(bias.detach().float(), n))

    def int4_weight(self) -> torch.Tensor:
        """The (out, in) weights, unpacked, as int8 in [-8, 7]."""
        n, k = self.padded_shape
        low, high = self.weight & 0x0F, self.weight >> 4  # (block, group, m, channel, i)
        q = torch.stack((low, high), dim=3).to(torch.int8) - 8  # (block, group, m, nibble, channel, i)
        return q.permute(0, 4, 1, 2, 3, 5).reshape(n, k)[: self.out_features, : self.in_features]

    def group_scales(self) -> torch.Tensor:
        """(out, in / 64) float32: each group's scale."""
        n, k = self.padded_shape
        return self.group_scale.transpose(1, 2).reshape(n, k // BLOCK_K).float()[: self.out_features]

    def dequantized_weight(self) -> torch.Tensor:
        """Each int4 value times its group's scale."""
        k = self.padded_shape[1]
        q = torch.zeros((self.out_features, k))
        q[:, : self.in_features] = self.int4_weight().float()
        w = (q.view(self.out_features, k // BLOCK_K, BLOCK_K) * self.group_scales()[..., None]).view(-1, k)
        return w[:, : self.in_features]


INT4_SCALE_FACTORS = torch.linspace(1.0, 0.8, 11)
"""Scales tried per group, as fractions of Q4_0's: the best cuts the squared error of Gaussian
weights by ~10% (searching finer or wider gains < 1% more)."""


INT4_CHUNK_GROUPS = 2048
"""Groups searched at once: their scratch (512 KB) stays in the core's cache through the eleven
passes, which made a checkpoint's int4 bake ~5x faster than searching a whole matrix at a time."""


def _int4_groups(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q in [-8, 7] as int8, bf16 scale (..., 1)) for each group along the last dim of `groups`."""
    flat = groups.reshape(-1, groups.shape[-1])
    q = torch.empty(flat.shape, dtype=torch.int8)
    scale = torch.empty((flat.shape[0], 1), dtype=torch.bfloat16)
    for start in range(0, flat.shape[0], INT4_CHUNK_GROUPS):
        chunk = slice(start, start + INT4_CHUNK_GROUPS)
        q[chunk], scale[chunk] = _int4_chunk(flat[chunk])
    return q.view(groups.shape), scale.view(*groups.shape[:-1], 1)


def _int4_chunk(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q4_0 = groups.gather(-1, groups.abs().argmax(dim=-1, keepdim=True)) / -8.0
    squared_error = torch.empty_like(groups)
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    for factor in INT4_SCALE_FACTORS:
        scale = (q4_0 * factor).to(torch.bfloat16)
        step = scale.float()
        step = torch.where(step != 0, step, 1.0)  # an all-zero group: its values round to 0 whatever the step
        torch.div(groups, step, out=squared_error)
        squared_error.round_().clamp_(-8, 7).mul_(step).sub_(groups).square_()
        error = squared_error.sum(dim=-1, keepdim=True)
        if best is None:
            best = (scale, error)
        else:
            better = error < best[1]  # ties keep the earlier factor, the one nearer Q4_0's
            best = (torch.where(better, scale, best[0]), torch.minimum(error, best[1]))
    assert best is not None
    step = best[0].float()
    q = torch.where(step != 0, torch.round(groups / step), 0.0).clamp_(-8, 7)
    return q.to(torch.int8), best[0]


PackedLinear = Int8Linear | Int4Linear
"""A Linear layer as the native step reads it."""


def gather(linears: Sequence[PackedLinear]) -> None:
    """Move the buffers the step streams (weights, group scales) into one block of memory per
    dtype, in `linears`' order: anonymous memory read front to back keeps the prefetchers running
    across layers (read from a file mapping, the same weights stream ~15% slower), on 2 MB pages
    where the kernel gives them (`huge_page_tensor`). One dtype a block, because `torch.save`
    refuses views of one storage as different types."""
    by_dtype: dict[torch.dtype, list[tuple[PackedLinear, str]]] = {}
    for lin in linears:
        for name in lin.streamed:
            by_dtype.setdefault(getattr(lin, name).dtype, []).append((lin, name))
    for dtype, streamed in by_dtype.items():
        block = huge_page_tensor(sum(getattr(lin, name).numel() for lin, name in streamed), dtype)
        offset = 0
        for lin, name in streamed:
            tensor: torch.Tensor = getattr(lin, name)
            part = block[offset : offset + tensor.numel()].view(tensor.shape)
            part.copy_(tensor)
            setattr(lin, name, part)
            offset += tensor.numel()


def step_bytes(
    linears: Sequence[PackedLinear], layers: int, rows: int, heads: int, head_dim: int, position: int
) -> int:
    """Bytes one native step at `position` streams: every packed weight, and each row's KV cache so
    far (int8 keys and values, with a scale each and a key sum). Norms and activations stay in cache."""
    per_position = 2 * head_dim + 3 * 4
    return streamed_bytes(linears) + (position + 1) * layers * rows * heads * per_position


def streamed_bytes(linears: Sequence[PackedLinear]) -> int:
    """Bytes of the buffers every step reads through in `linears` (see `gather`)."""
    return sum(getattr(lin, name).nbytes for lin in linears for name in lin.streamed)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one scale per row, as the kernel does: (q, scale (rows, 1))."""
    top = x.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(top > 0, 127.0 / top, torch.zeros_like(top))
    return (x * inv).round_().to(torch.int8), top / 127.0


def int8_matmul(quant: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`quant @ weight` of int8 matrices, exactly, in int32 (torch's int8 matrix product, oneDNN's).

    Where that product saturates (oneDNN without VNNI, e.g. on AVX2-only CPUs: it adds 128 to the
    inputs and sums pairs of unsigned-by-signed products in int16, as vpmaddubsw does), the
    weights go in two halves within its range: w = 2 (w >> 1) + (w & 1), two products."""
    if not int8_matmul_saturates():
        return torch._int_mm(quant, weight)
    high = torch._int_mm(quant, torch.bitwise_right_shift(weight, 1))
    return high.mul_(2).add_(torch._int_mm(quant, torch.bitwise_and(weight, 1)))


@cache
def int8_matmul_saturates() -> bool:
    """Whether torch's int8 matrix product loses a sum in int16 on this CPU: 32 rows and columns of
    127s (inputs past 127 once shifted to unsigned, as oneDNN shifts them without VNNI)."""
    ones = torch.full((32, 64), 127, dtype=torch.int8)
    return bool((torch._int_mm(ones, ones.t().contiguous()) != 64 * 127 * 127).any())


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _padded(values: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, dtype=values.dtype)
    out[: values.shape[0]] = values
    return out


@dataclass
class LayerWeights:
    """One decoder layer's weights for the native step."""

    norms: tuple[nn.LayerNorm, nn.LayerNorm, nn.LayerNorm]  # self-attention, cross-attention, feed-forward
    qkv: PackedLinear
    out: PackedLinear
    cross_q: PackedLinear
    cross_out: PackedLinear
    fc1: PackedLinear
    fc2: PackedLinear

    def linears(self) -> tuple[PackedLinear, ...]:
        """The layer's products in the order the step reads them (and `srm_layer` lists them)."""
        return (self.qkv, self.out, self.cross_q, self.cross_out, self.fc1, self.fc2)


def value_text(length: int) -> int:
    """A text of `length` positions as the folded values hold it: in whole groups (srm_value_text)."""
    return _round_up(length, VALUE_GROUP)


@dataclass
class FoldedCrossAttention:
    """One prompt's cross-attention for one layer with its query and output projections folded
    into the text's keys and values (see srm_layer in srm.h): per (head, text position), a
    key vector and a value vector of the decoder's width."""

    keys: Int8Linear  # (heads * text length, hidden): the scores are one product of the normed row
    # (hidden / KEY_TILE, heads, text / VALUE_GROUP, KEY_TILE, VALUE_GROUP) int8, the text padded to
    # whole groups, the hidden size to whole tiles, with zeros (srm.h's SRM_VALUE_GROUP)
    values: torch.Tensor
    value_scale: torch.Tensor  # (heads * text length): one per value vector
    value_sum: torch.Tensor  # (heads, hidden padded): each head's int8 values summed over the text

    @classmethod
    def fold(
        cls, keys: torch.Tensor, values: torch.Tensor, query_weight: torch.Tensor, output_weight: torch.Tensor
    ) -> Self:
        """From one prompt's keys and values (heads, length, head_dim) and the layer's query and
        output weights, each (heads, head_dim, hidden): key (h, t) = keys[h, t] @ query_weight[h] /
        sqrt(head_dim), value (h, t) = values[h, t] @ output_weight[h]. Quantised in torch: the
        reference for the kernel's `srm_fold_quantize` (`NativeKernels.fold_cross_attention`)."""
        heads, length, head_dim = (int(size) for size in keys.shape)
        hidden = int(query_weight.shape[-1])
        projected_keys, folded_values = cls.project(keys, values, query_weight, output_weight)
        folded_keys = projected_keys * cls.key_factor(head_dim)
        quantized, scale = quantize_rows(folded_values)
        text, width = value_text(length), _round_up(hidden, KEY_TILE)
        padded = torch.zeros((heads, text, width), dtype=torch.int8)
        padded[:, :length, :hidden] = quantized.view(heads, length, hidden)
        tiles = padded.view(heads, text // VALUE_GROUP, VALUE_GROUP, width // KEY_TILE, KEY_TILE)
        value_sum = padded.sum(dim=1, dtype=torch.int32)
        keys_linear = Int8Linear(folded_keys, None)
        return cls(keys_linear, tiles.permute(3, 0, 1, 4, 2).contiguous(), scale.view(-1), value_sum)

    @staticmethod
    def project(
        keys: torch.Tensor, values: torch.Tensor, query_weight: torch.Tensor, output_weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`fold`'s keys (before `key_factor`) and values, (heads * length, hidden) float32 each."""
        heads, length, _ = (int(size) for size in keys.shape)
        hidden = int(query_weight.shape[-1])
        # In the weights' dtype (bfloat16 as served on CPUs with bf16 dot products, float32
        # elsewhere: see MusicgenModel.prepare_to_serve), summed in float32.
        folded_keys = torch.bmm(keys.to(query_weight.dtype), query_weight).float()
        folded_values = torch.bmm(values.to(output_weight.dtype), output_weight).float()
        return folded_keys.view(heads * length, hidden), folded_values.view(heads * length, hidden)

    @staticmethod
    def key_factor(head_dim: int) -> float:
        """What the folded keys are multiplied by: attention's 1 / sqrt(head_dim)."""
        return float(head_dim**-0.5)

    @classmethod
    def empty(cls, heads: int, length: int, hidden: int) -> Self:
        """Zeroed buffers of the fold of `heads` heads' `length` text positions (the kernel's output)."""
        n, k = _round_up(heads * length, BLOCK_N), _round_up(hidden, BLOCK_K)
        text, width = value_text(length), _round_up(hidden, KEY_TILE)
        keys = Int8Linear.from_packed(
            torch.zeros((n // BLOCK_N, k // BLOCK_K, BLOCK_N, BLOCK_K), dtype=torch.int8),
            torch.zeros(n),
            torch.zeros(n, dtype=torch.int32),
            (heads * length, hidden),
        )
        values = torch.zeros((width // KEY_TILE, heads, text // VALUE_GROUP, KEY_TILE, VALUE_GROUP), dtype=torch.int8)
        return cls(keys, values, torch.zeros(heads * length), torch.zeros((heads, width), dtype=torch.int32))

    def dequantized_values(self) -> torch.Tensor:
        """The value vectors (heads * text length, hidden) as the kernel multiplies them, in float32."""
        tiles, heads, groups, tile, group = (int(size) for size in self.values.shape)
        vectors = self.values.permute(1, 2, 4, 0, 3).reshape(heads, groups * group, tiles * tile)
        length = self.value_scale.numel() // heads
        hidden = int(self.keys.in_features)
        return vectors[:, :length, :hidden].reshape(heads * length, hidden).float() * self.value_scale[:, None]


class PackedConvolution:
    """A convolution's weight (out, in, taps) in `srm_conv`'s blocks: int16 with one scale per
    output channel, zero padded to whole blocks and an even number of input channels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> None:
        out_features, channels, taps = (int(size) for size in weight.shape)
        if channels > CONV_MAX_CHANNELS:
            raise ValueError(f"at most {CONV_MAX_CHANNELS} input channels, not {channels}")
        self.out_features, self.channels, self.taps, self.dilation = out_features, channels, taps, dilation
        self.padded_channels = channels + channels % 2
        n = _round_up(out_features, CONV_BLOCK_N)
        w = weight.detach().float()
        scale = w.abs().amax(dim=(1, 2)).clamp(min=1e-30) / CONV_WEIGHT_MAX
        quantised = torch.round(w / scale[:, None, None]).clamp(-CONV_WEIGHT_MAX, CONV_WEIGHT_MAX)
        padded = torch.zeros((n, taps, self.padded_channels), dtype=torch.int16)
        padded[:out_features, :, :channels] = quantised.permute(0, 2, 1).to(torch.int16)
        blocks = padded.view(n // CONV_BLOCK_N, CONV_BLOCK_N, taps, self.padded_channels // 2, 2)
        self.weight = blocks.permute(0, 2, 3, 1, 4).contiguous()
        self.scale = torch.zeros(n)
        self.scale[:out_features] = scale
        self.bias = None if bias is None else bias.detach().float().contiguous()

    @property
    def padded_outputs(self) -> int:
        """Output channels including the last block's padding."""
        return int(self.scale.shape[0])

    def dequantized(self) -> torch.Tensor:
        """The weight (out, in, taps) as the kernel multiplies it, in float32."""
        n, taps, pairs = self.padded_outputs, self.taps, self.padded_channels // 2
        rows = self.weight.permute(0, 3, 1, 2, 4).reshape(n, taps, 2 * pairs).float() * self.scale[:, None, None]
        return rows[: self.out_features, :, : self.channels].permute(0, 2, 1)
