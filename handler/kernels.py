"""Native int8/int4 decoder step (`kernels.c`): building the library, packing weights, calling it.

The library is compiled ahead of time (`python -m handler.kernels`, run by `make` and the image
build), once per instruction set it can use; `load()` picks the best one this CPU runs. Without a
library the engine runs the same arithmetic in torch (the layers' `forward`), only slower.
"""

import ctypes
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Self

import torch
from torch import nn

from handler.cpu import cpu_flags

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK_N, BLOCK_N4, BLOCK_K, MAX_ROWS, KEY_TILE, MAX_HEAD_DIM, VALUE_BLOCK = 4, 16, 64, 8, 32, 256, 64
"""Must match SRM_BLOCK_N, SRM_BLOCK_N4, SRM_BLOCK_K, SRM_MAX_ROWS, SRM_KEY_TILE, SRM_MAX_HEAD_DIM
and SRM_VALUE_BLOCK in kernels.c."""


@dataclass(frozen=True)
class Variant:
    """One build of the library: for the CPUs that have all of `cpu_flags`."""

    name: str
    flags: tuple[str, ...]
    cpu_flags: frozenset[str]

    def path(self, directory: Path = SOURCE.parent) -> Path:
        return directory / f"libsrm_kernels_{self.name}.so"


GENERIC = Variant("generic", (), frozenset())
"""Plain C for any CPU the compiler targets by default (its scalar path on x86)."""

# Best first. The targets are portable baselines, not the build machine's own CPU: the image is
# built on one machine and runs on Lambda's (x86-64-v3 is AVX2 + FMA, on every Lambda x86 CPU).
_VARIANTS = {
    "x86_64": (
        Variant("avx512vnni", ("-march=x86-64-v4", "-mavx512vnni"), frozenset({"avx512bw", "avx512_vnni"})),
        Variant("avx2", ("-march=x86-64-v3",), frozenset({"avx2", "fma"})),
    ),
    "aarch64": (Variant("armv8", ("-march=armv8-a",), frozenset()),),
}


def variants(machine: str | None = None) -> tuple[Variant, ...]:
    """The builds made for `machine` (default: this one), best first."""
    return _VARIANTS.get(machine or platform.machine(), (GENERIC,))


def openmp_runtime() -> Path | None:
    """torch's own OpenMP runtime, where its wheel bundles one: the library links to that file."""
    bundled = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return bundled[0] if bundled else None


def build_commands(variant: Variant, output: Path, compiler: str = "cc") -> list[list[str]]:
    """Compile, then link. Linking to torch's OpenMP runtime (not the system's) makes the kernels
    share torch's thread pool; two runtimes would each keep threads spinning on the same cores."""
    obj = output.with_suffix(".o")
    runtime = openmp_runtime()
    openmp = [str(runtime)] if runtime else ["-fopenmp"]
    return [
        [compiler, "-O3", *variant.flags, "-fopenmp", "-fPIC", "-c", str(SOURCE), "-o", str(obj)],
        [compiler, "-shared", str(obj), "-o", str(output), *openmp, "-lm"],
    ]


def build(selected: Sequence[Variant] | None = None, directory: Path = SOURCE.parent) -> list[Path]:
    """Compile each variant into `directory`, replacing a library only once its build has succeeded."""
    built = []
    directory.mkdir(parents=True, exist_ok=True)
    for variant in selected or variants():
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            partial = Path(scratch) / "kernels.so"
            for command in build_commands(variant, partial, os.environ.get("CC", "cc")):
                subprocess.run(command, check=True)
            partial.chmod(0o755)  # Lambda runs the image as another user
            os.replace(partial, variant.path(directory))
        built.append(variant.path(directory))
    return built


# ------------------------------------------------------------------------------------ weights


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

    def int8_weight(self) -> torch.Tensor:
        """The (out, in) int8 weights, unpacked."""
        n, k = self.padded_shape
        unpacked = self.weight.transpose(1, 2).reshape(n, k)
        return unpacked[: self.out_features, : self.in_features]

    def dequantized_weight(self) -> torch.Tensor:
        return self.int8_weight().float() * self.scale[: self.out_features, None]


class Int4Linear(_PackedLinear):
    """A Linear layer with int4 weights and one bfloat16 scale per 64 inputs of each output channel.

    Half the bytes of `Int8Linear` for the step to stream. Each group's scale is the one, of a few
    near llama.cpp's Q4_0 choice (largest magnitude at -8), with the least squared error. Stored
    as weight + 8 and packed as (out / 16, in / 64, 8, 16, 4) bytes: byte (m, j, i) of a block and
    group holds input 8m + i of the block's channel j in its low nibble and input 8m + 4 + i in
    its high one, so each 64 bytes unpack to four consecutive inputs of 16 channels, a channel per
    32-bit lane (see srm_linear in kernels.c). Scales are (out / 16, in / 64, 16).
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


def _int4_groups(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q in [-8, 7] as int8, bf16 scale (..., 1)) for each group along the last dim of `groups`."""
    q4_0 = groups.gather(-1, groups.abs().argmax(dim=-1, keepdim=True)) / -8.0
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    for factor in INT4_SCALE_FACTORS:
        scale = (q4_0 * factor).to(torch.bfloat16)
        step = scale.float()
        q = torch.where(step != 0, torch.round(groups / step), 0.0).clamp(-8, 7)
        error = (q * step - groups).square().sum(dim=-1, keepdim=True)
        if best is None:
            best = (q, scale, error)
        else:
            better = error < best[2]
            best = (torch.where(better, q, best[0]), torch.where(better, scale, best[1]), torch.minimum(error, best[2]))
    assert best is not None
    return best[0].to(torch.int8), best[1]


PackedLinear = Int8Linear | Int4Linear
"""A Linear layer as the native step reads it."""


def gather(linears: Sequence[PackedLinear]) -> None:
    """Move the buffers the step streams (weights, group scales) into one block of memory per
    dtype, in `linears`' order: anonymous memory read front to back keeps the prefetchers running
    across layers (read from a file mapping, the same weights stream ~15% slower). One dtype a
    block, because `torch.save` refuses views of one storage as different types."""
    by_dtype: dict[torch.dtype, list[tuple[PackedLinear, str]]] = {}
    for lin in linears:
        for name in lin.streamed:
            by_dtype.setdefault(getattr(lin, name).dtype, []).append((lin, name))
    for dtype, streamed in by_dtype.items():
        block = torch.empty(sum(getattr(lin, name).numel() for lin, name in streamed), dtype=dtype)
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
    return torch.round(x * inv).to(torch.int8), top / 127.0


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


@dataclass
class FoldedCrossAttention:
    """One prompt's cross-attention for one layer with its query and output projections folded
    into the text's keys and values (see srm_layer in kernels.c): per (head, text position), a
    key vector and a value vector of the decoder's width."""

    keys: Int8Linear  # (heads * text length, hidden): the scores are one product of the normed row
    values: torch.Tensor  # (hidden / VALUE_BLOCK, heads * text length, VALUE_BLOCK) int8, zero padded
    value_scale: torch.Tensor  # (heads * text length)

    @classmethod
    def fold(
        cls, keys: torch.Tensor, values: torch.Tensor, query_weight: torch.Tensor, output_weight: torch.Tensor
    ) -> Self:
        """From one prompt's keys and values (heads, length, head_dim) and the layer's query and
        output weights, each (heads, head_dim, hidden): key (h, t) = keys[h, t] @ query_weight[h] /
        sqrt(head_dim), value (h, t) = values[h, t] @ output_weight[h]."""
        heads, length, head_dim = (int(size) for size in keys.shape)
        hidden = int(query_weight.shape[-1])
        # In the weights' dtype (bfloat16 as served: half the time of float32), summed in float32.
        folded_keys = torch.bmm(keys.to(query_weight.dtype), query_weight).float() * head_dim**-0.5
        folded_values = torch.bmm(values.to(output_weight.dtype), output_weight).float().view(heads * length, hidden)
        quantized, scale = quantize_rows(folded_values)
        blocks = torch.zeros((heads * length, _round_up(hidden, VALUE_BLOCK)), dtype=torch.int8)
        blocks[:, :hidden] = quantized
        values_by_block = blocks.view(heads * length, -1, VALUE_BLOCK).transpose(0, 1).contiguous()
        return cls(Int8Linear(folded_keys.view(heads * length, hidden), None), values_by_block, scale.view(-1))


# ------------------------------------------------------------------------------------ ctypes

_ptr = ctypes.c_void_p


class _Linear(ctypes.Structure):
    _fields_ = [
        ("weight", _ptr),
        ("scale", _ptr),
        ("row_sum", _ptr),
        ("group_scale", _ptr),
        ("bias", _ptr),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
        ("bits", ctypes.c_int64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        *((name, _ptr) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "ln3_w", "ln3_b")),
        *((name, _Linear) for name in ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")),
        *((name, _ptr) for name in ("k_cache", "v_cache", "k_scale", "v_scale", "k_sum", "cross_k", "cross_v")),
        ("cross_keys", _Linear),
        ("cross_values", _ptr),
        ("cross_value_scale", _ptr),
    ]


class _Decoder(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int64)
            for name in ("layers", "rows", "cond_rows", "hidden", "heads", "head_dim", "capacity", "cross_len")
        ),
        ("eps", ctypes.c_float),
        ("threads", ctypes.c_int32),
        ("layer", ctypes.POINTER(_Layer)),
        ("final_ln_w", _ptr),
        ("final_ln_b", _ptr),
        ("head", _Linear),
        ("cross_mask", _ptr),
        *((name, _ptr) for name in ("normed", "quant", "row_scale", "quant_sum", "wide", "attn", "scores", "logits")),
        ("in_stride", ctypes.c_int64),
        ("out_stride", ctypes.c_int64),
    ]


class _Generation(ctypes.Structure):
    _fields_ = [
        ("embed", _ptr),
        ("positions", _ptr),
        *((name, ctypes.c_int64) for name in ("prompts", "codebooks", "vocab", "length")),
        ("guidance", ctypes.c_float),
        ("inv_temperature", ctypes.c_float),
        ("top_k", ctypes.c_int64),
        ("uniforms", _ptr),
        ("forced", _ptr),
        ("pad_token", ctypes.c_int64),
        ("sequence", _ptr),
        ("scratch", _ptr),
        ("picked", _ptr),
    ]


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _folded_fields(folded: FoldedCrossAttention | None) -> tuple[_Linear, int | None, int | None]:
    if folded is None:
        return _Linear(), None, None  # n == 0: the step runs the projections
    return _linear_struct(folded.keys), folded.values.data_ptr(), folded.value_scale.data_ptr()


def _linear_struct(lin: PackedLinear) -> _Linear:
    n, k = lin.padded_shape
    common = {
        "weight": lin.weight.data_ptr(),
        "bias": _address(lin.bias),
        "n": n,
        "k": k,
        "in_features": lin.in_features,
        "out_features": lin.out_features,
    }
    if isinstance(lin, Int4Linear):
        return _Linear(**common, group_scale=lin.group_scale.data_ptr(), bits=4)
    return _Linear(**common, scale=lin.scale.data_ptr(), row_sum=lin.row_sum.data_ptr(), bits=8)


class NativeKernels:
    """The loaded library."""

    def __init__(self, library: ctypes.CDLL, variant: Variant) -> None:
        self.variant = variant
        self._step = library.srm_decoder_step
        self._step.restype = None
        self._step.argtypes = [ctypes.POINTER(_Decoder), _ptr, ctypes.c_int64]
        self._generate = library.srm_generate
        self._generate.restype = None
        self._generate.argtypes = [
            ctypes.POINTER(_Decoder),
            ctypes.POINTER(_Generation),
            _ptr,
            ctypes.c_int64,
            ctypes.c_int64,
        ]
        self._sample = library.srm_sample
        self._sample.restype = None
        self._sample.argtypes = [ctypes.POINTER(_Decoder), ctypes.POINTER(_Generation), _ptr]
        self._linear = library.srm_linear_forward
        self._linear.restype = None
        self._linear.argtypes = [
            ctypes.POINTER(_Decoder),
            ctypes.POINTER(_Linear),
            ctypes.c_int64,
            _ptr,
            ctypes.c_int64,
        ]

    def linear(self, lin: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        """`lin` applied to the rows of `x` (rows, in) by the kernel, MAX_ROWS rows at a time."""
        n, k = lin.padded_shape
        q, row_scale = quantize_rows(x.float())
        out = torch.empty((int(x.shape[0]), n))
        for start in range(0, int(x.shape[0]), MAX_ROWS):
            rows = min(MAX_ROWS, int(x.shape[0]) - start)
            quant = torch.zeros((rows, k), dtype=torch.int8)
            quant[:, : lin.in_features] = q[start : start + rows]
            quant_sum = quant.view(rows, k // BLOCK_K, BLOCK_K).sum(dim=-1, dtype=torch.int32)
            holder = _Decoder(
                rows=rows,
                threads=torch.get_num_threads(),
                quant=quant.data_ptr(),
                row_scale=row_scale[start : start + rows].contiguous().data_ptr(),
                quant_sum=quant_sum.data_ptr(),
                in_stride=k,
            )
            self._linear(ctypes.byref(holder), ctypes.byref(_linear_struct(lin)), rows, out[start].data_ptr(), n)
        return out[:, : lin.out_features]

    def generate(self, run: "NativeRun", generation: "NativeGeneration", first: int, last: int) -> None:
        """Decode steps `first` to `last` - 1 of `generation` on `run`, extending its sequence."""
        self._generate(ctypes.byref(run.struct), ctypes.byref(generation.struct), run.x.data_ptr(), first, last)

    def sample(
        self, logits: torch.Tensor, guidance: float | None, temperature: float, top_k: int, uniforms: torch.Tensor
    ) -> torch.Tensor:
        """The tokens (prompts, codebooks) `generate` picks from one step's logits (rows, codebooks,
        vocab), with guidance (None: no unconditional rows) and one uniform per token."""
        rows, codebooks, vocab = (int(size) for size in logits.shape)
        prompts = rows // 2 if guidance is not None else rows
        flat = logits.float().reshape(rows, codebooks * vocab).contiguous()
        picked = torch.empty((prompts, codebooks), dtype=torch.long)
        scratch = torch.empty(3 * vocab)
        holder = _Decoder(rows=rows, logits=flat.data_ptr(), head=_Linear(n=codebooks * vocab))
        sampling = _Generation(
            prompts=prompts,
            codebooks=codebooks,
            vocab=vocab,
            guidance=1.0 if guidance is None else guidance,
            inv_temperature=_inverse_temperature(temperature),
            top_k=top_k,
            scratch=scratch.data_ptr(),
            picked=picked.data_ptr(),
        )
        draws = uniforms.float().contiguous()
        self._sample(ctypes.byref(holder), ctypes.byref(sampling), draws.data_ptr())
        return picked

    def step(self, run: "NativeRun", x: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoder step of `run` on embeddings `x` (rows, hidden) -> logits (rows, head outputs)."""
        run.x.copy_(x)
        self._step(ctypes.byref(run.struct), run.x.data_ptr(), pos)
        return run.logits


def head_dim_supported(head_dim: int) -> bool:
    """Whether the native step's cache layout holds attention heads of `head_dim` dimensions."""
    return head_dim % 4 == 0 and head_dim <= MAX_HEAD_DIM


class NativeRun:
    """Caches, scratch and the C description of one generation's decoder state."""

    def __init__(
        self,
        kernels: NativeKernels,
        layers: Sequence[LayerWeights],
        final_norm: nn.LayerNorm,
        head: PackedLinear,
        *,
        heads: int,
        rows: int,
        cond_rows: int,
        capacity: int,
        cross_k: Sequence[torch.Tensor],
        cross_v: Sequence[torch.Tensor],
        cross_mask: torch.Tensor | None,
        folded_cross: Sequence[FoldedCrossAttention] | None = None,
    ) -> None:
        """`folded_cross`: per layer, the one prompt's folded cross-attention (`cond_rows` 1), or
        None to run the projections and attend to `cross_k` / `cross_v`."""
        if rows > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows per step")
        if folded_cross is not None and (cond_rows != 1 or len(folded_cross) != len(layers)):
            raise ValueError("folded cross-attention is for one prompt, one per layer")
        hidden = int(final_norm.weight.shape[0])
        head_dim = hidden // heads
        self.kernels = kernels
        self.rows = rows
        linears = [head, *(lin for lw in layers for lin in lw.linears())]
        in_stride = max(lin.padded_shape[1] for lin in linears)
        out_stride = max(lin.padded_shape[0] for lin in linears)
        cross_len = int(cross_k[0].shape[2])
        # Uninitialised: attention uses only positions already written. Keys are in tiles of
        # KEY_TILE positions, four dimensions of a key side by side (see tile_dots in kernels.c).
        tiles = -(-capacity // KEY_TILE)
        if not head_dim_supported(head_dim):
            raise ValueError(f"attention heads need a multiple of 4 dimensions, at most {MAX_HEAD_DIM}")
        shape = (len(layers), rows, heads)
        self.k_cache = torch.empty((*shape, tiles, head_dim // 4, KEY_TILE, 4), dtype=torch.int8)
        self.v_cache = torch.empty((*shape, capacity, head_dim), dtype=torch.int8)
        self.k_scale = torch.empty((*shape, capacity))
        self.v_scale = torch.empty((*shape, capacity))
        self.k_sum = torch.empty((*shape, capacity), dtype=torch.int32)
        self.x = torch.empty((rows, hidden))
        self.logits = torch.empty((rows, head.padded_shape[0]))
        normed = torch.empty((rows, in_stride))
        quant = torch.zeros((rows, in_stride), dtype=torch.int8)
        row_scale = torch.empty(rows)
        quant_sum = torch.empty((rows, in_stride // BLOCK_K), dtype=torch.int32)
        wide = torch.empty((rows, out_stride))
        attn = torch.zeros((rows, in_stride))
        scores = torch.empty((rows * heads, max(capacity, cross_len)))
        mask = None if cross_mask is None else cross_mask.to(torch.uint8).contiguous()
        keys = [k.contiguous() for k in cross_k]
        values = [v.contiguous() for v in cross_v]
        # The C side holds raw pointers: keep every tensor it points to alive as long as the run.
        scratch = [normed, quant, row_scale, quant_sum, wide, attn, scores]
        self._keep = [*scratch, mask, keys, values, layers, final_norm, head, folded_cross]
        self._layers = (_Layer * len(layers))(
            *(
                _Layer(
                    *(norm_param for norm in lw.norms for norm_param in (norm.weight.data_ptr(), norm.bias.data_ptr())),
                    *(_linear_struct(lin) for lin in lw.linears()),
                    self.k_cache[i].data_ptr(),
                    self.v_cache[i].data_ptr(),
                    self.k_scale[i].data_ptr(),
                    self.v_scale[i].data_ptr(),
                    self.k_sum[i].data_ptr(),
                    keys[i].data_ptr(),
                    values[i].data_ptr(),
                    *_folded_fields(None if folded_cross is None else folded_cross[i]),
                )
                for i, lw in enumerate(layers)
            )
        )
        self.struct = _Decoder(
            layers=len(layers),
            rows=rows,
            cond_rows=cond_rows,
            hidden=hidden,
            heads=heads,
            head_dim=head_dim,
            capacity=capacity,
            cross_len=cross_len,
            eps=float(final_norm.eps),
            threads=torch.get_num_threads(),
            layer=self._layers,
            final_ln_w=final_norm.weight.data_ptr(),
            final_ln_b=final_norm.bias.data_ptr(),
            head=_linear_struct(head),
            cross_mask=_address(mask),
            normed=normed.data_ptr(),
            quant=quant.data_ptr(),
            row_scale=row_scale.data_ptr(),
            quant_sum=quant_sum.data_ptr(),
            wide=wide.data_ptr(),
            attn=attn.data_ptr(),
            scores=scores.data_ptr(),
            logits=self.logits.data_ptr(),
            in_stride=in_stride,
            out_stride=out_stride,
        )

    def step(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoder step on embeddings `x` (rows, hidden) -> logits (rows, head outputs), reused next step."""
        return self.kernels.step(self, x, pos)


class NativeGeneration:
    """The token side of a native generation: tables, sampling settings, delay pattern and the
    sequence (prompts, codebooks, length) that `NativeKernels.generate` extends in place."""

    def __init__(
        self,
        embed: torch.Tensor,
        positions: torch.Tensor,
        sequence: torch.Tensor,
        forced: torch.Tensor,
        pad_token: int,
        *,
        guidance: float,
        temperature: float,
        top_k: int,
        uniforms: torch.Tensor,
    ) -> None:
        prompts, codebooks, length = (int(size) for size in sequence.shape)
        vocab = int(embed.shape[0]) // codebooks - 1
        if sequence.dtype != torch.long or not sequence.is_contiguous():
            raise ValueError("the sequence must be a contiguous int64 tensor")
        if tuple(forced.shape) != (codebooks, length) or tuple(uniforms.shape) != (length - 1, prompts, codebooks):
            raise ValueError("the delay pattern and the uniforms must cover the whole sequence")
        if int(positions.shape[0]) < length:
            raise ValueError(f"position embeddings for {length} positions needed, {positions.shape[0]} given")
        tensors = {
            "embed": embed.float().contiguous(),
            "positions": positions.float().contiguous(),
            "uniforms": uniforms.float().contiguous(),
            "forced": forced.to(torch.uint8).contiguous(),
            "scratch": torch.empty(3 * vocab),
            "picked": torch.empty((prompts, codebooks), dtype=torch.long),
        }
        self.sequence = sequence
        # The C side holds raw pointers: keep every tensor it points to alive as long as this.
        self._keep = tensors
        self.struct = _Generation(
            **{name: tensor.data_ptr() for name, tensor in tensors.items()},
            prompts=prompts,
            codebooks=codebooks,
            vocab=vocab,
            length=length,
            guidance=guidance,
            inv_temperature=_inverse_temperature(temperature),
            top_k=top_k,
            pad_token=pad_token,
            sequence=sequence.data_ptr(),
        )


def _inverse_temperature(temperature: float) -> float:
    """What the native sampler takes: 0 for greedy decoding (a temperature of 0 or less)."""
    return 0.0 if temperature <= 0 else 1.0 / temperature


def load(variant: Variant, directory: Path = SOURCE.parent) -> NativeKernels | None:
    """`variant`'s library in `directory`, or None when it has not been built or cannot be loaded."""
    path = variant.path(directory)
    if not path.is_file():
        return None
    try:
        # torch is imported first, so the library's OpenMP runtime is torch's own (one thread pool).
        return NativeKernels(ctypes.CDLL(str(path)), variant)
    except OSError:
        logger.warning("native kernels could not be loaded", extra={"library": str(path)}, exc_info=True)
        return None


@cache
def best() -> NativeKernels | None:
    """The best library built for this CPU, loaded once per process; None if none is built."""
    for variant in variants():
        if runnable(variant) and (kernels := load(variant)) is not None:
            return kernels
    logger.warning("native kernels not built (python -m handler.kernels); the int8 decoder runs in torch, slowly")
    return None


def runnable(variant: Variant) -> bool:
    """Whether this CPU has the instructions `variant` was compiled for."""
    return variant.cpu_flags <= cpu_flags()


if __name__ == "__main__":
    for path in build(directory=Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE.parent):
        print(path)
