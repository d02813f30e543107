"""Calling the native decoder step: the loaded library, one generation's caches and scratch, and
its token-side state. `best()` loads the best build this CPU runs; without one the engine runs
the same arithmetic in torch (the packed layers' `forward`), only slower."""

import ctypes
import logging
import math
from collections.abc import Callable, Sequence
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handler.allocator import huge_page_tensor
from handler.cpu import cpu_flags
from handler.native import abi
from handler.native.abi import Decoder, Generation, Layer, Linear, Pointer
from handler.native.build import SOURCE, Variant, variants
from handler.native.packing import (
    BLOCK_K,
    C_CONSTANTS,
    KEY_TILE,
    MAX_HEAD_DIM,
    MAX_ROWS,
    FoldedCrossAttention,
    Int4Linear,
    Int8Linear,
    LayerWeights,
    PackedConvolution,
    PackedLinear,
    quantize_rows,
    value_text,
)
from handler.settings import AUTO, get_settings

logger = logging.getLogger(__name__)


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _folded_fields(folded: FoldedCrossAttention | None) -> tuple[Linear, int | None, int | None, int | None]:
    if folded is None:
        return Linear(), None, None, None  # n == 0: the step runs the projections
    return (
        _linear_struct(folded.keys),
        folded.values.data_ptr(),
        folded.value_scale.data_ptr(),
        folded.value_sum.data_ptr(),
    )


def _one_prompt(cross_k: Sequence[torch.Tensor], cross_v: Sequence[torch.Tensor]) -> bool:
    """Whether every conditional row attends to the same text: the first row's keys and values."""
    return all(bool((part == part[:1]).all()) for part in (*cross_k, *cross_v))


def _linear_struct(lin: PackedLinear) -> Linear:
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
        return Linear(**common, group_scale=lin.group_scale.data_ptr(), bits=4)
    return Linear(**common, scale=lin.scale.data_ptr(), row_sum=lin.row_sum.data_ptr(), bits=8)


class NativeKernels:
    """The loaded library."""

    def __init__(self, library: ctypes.CDLL, variant: Variant) -> None:
        self.library = library  # for its other exported functions, e.g. the sampler's test entry
        self.variant = variant
        self._step = library.srm_decoder_step
        self._step.restype = None
        self._step.argtypes = [ctypes.POINTER(Decoder), Pointer, ctypes.c_int64]
        self._generate = library.srm_generate
        self._generate.restype = None
        self._generate.argtypes = [
            ctypes.POINTER(Decoder),
            ctypes.POINTER(Generation),
            Pointer,
            ctypes.c_int64,
            ctypes.c_int64,
        ]
        self._lstm = library.srm_lstm
        self._lstm.restype = None
        self._lstm.argtypes = [ctypes.POINTER(Decoder), ctypes.POINTER(Linear), Pointer, ctypes.c_int64, Pointer]
        self._elu = library.srm_elu
        self._elu.restype = None
        self._elu.argtypes = [
            Pointer,
            ctypes.c_int64,
            Pointer,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_float,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
        ]
        i64, i32, f32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_float
        self._conv_quantize = library.srm_conv_quantize
        self._conv_quantize.restype = None
        self._conv_quantize.argtypes = [Pointer, i64, i64, i64, i64, i64, i32, i32, f32, Pointer, i64, Pointer, i32]
        self._conv = library.srm_conv
        self._conv.restype = None
        self._conv.argtypes = [
            Pointer, Pointer, i64, i64, i64, i64, i64,  # the quantised input and its shape
            Pointer, Pointer, Pointer, i64,  # the weights
            Pointer, i64, i64, i32,  # the output
        ]  # fmt: skip
        self._fold_quantize = library.srm_fold_quantize
        self._fold_quantize.restype = None
        self._fold_quantize.argtypes = [Pointer, Pointer, i64, i64, i64, f32, *[Pointer] * 6, i32]
        self._linear = library.srm_linear_forward
        self._linear.restype = None
        self._linear.argtypes = [
            ctypes.POINTER(Decoder),
            ctypes.POINTER(Linear),
            ctypes.c_int64,
            Pointer,
            ctypes.c_int64,
        ]

    def linear(self, lin: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        """`lin` applied to the rows of `x` (rows, in) by the kernel, MAX_ROWS rows a call: every row
        quantised at once, each call pointed at its rows (a prefill makes thousands of calls)."""
        rows = int(x.shape[0])
        out = torch.empty((rows, lin.padded_shape[0]))
        inputs, weights = _QuantizedRows(lin, x), _linear_struct(lin)
        for start in range(0, rows, MAX_ROWS):
            _Product(self._linear, lin, weights, inputs, start, min(MAX_ROWS, rows - start), out[start:])()
        return out[:, : lin.out_features]

    def product(self, lin: PackedLinear, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The kernel's product of `lin` with the rows of `x` (at most MAX_ROWS), quantised now: a
        call that reruns the product alone and returns its (rows, padded outputs) result (the
        benchmark times the builds' arithmetic with it)."""
        rows = int(x.shape[0])
        if rows > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows a product, not {rows}")
        inputs, out = _QuantizedRows(lin, x), torch.empty((rows, lin.padded_shape[0]))
        return _Product(self._linear, lin, _linear_struct(lin), inputs, 0, rows, out)

    def fold_cross_attention(
        self, keys: torch.Tensor, values: torch.Tensor, query_weight: torch.Tensor, output_weight: torch.Tensor
    ) -> FoldedCrossAttention:
        """`FoldedCrossAttention.fold`'s result, bit for bit, quantised by the kernel (`srm_fold_quantize`)."""
        heads, length, head_dim = (int(size) for size in keys.shape)
        hidden = int(query_weight.shape[-1])
        folded_keys, folded_values = FoldedCrossAttention.project(keys, values, query_weight, output_weight)
        folded = FoldedCrossAttention.empty(heads, length, hidden)
        self._fold_quantize(
            folded_keys.data_ptr(), folded_values.data_ptr(), heads, length, hidden,
            FoldedCrossAttention.key_factor(head_dim),
            folded.keys.weight.data_ptr(), folded.keys.scale.data_ptr(), folded.keys.row_sum.data_ptr(),
            folded.values.data_ptr(), folded.value_scale.data_ptr(), folded.value_sum.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return folded

    def lstm_layer(self, w_hh: Int8Linear, gates_in: torch.Tensor) -> torch.Tensor:
        """One LSTM layer's recurrence from zero state (`srm_lstm`): `gates_in` (steps, batch, 4
        hidden) is each step's input product plus both biases; returns h (steps, batch, hidden).
        Up to MAX_ROWS sequences share a call: each step streams the recurrent weights once for them."""
        steps, batch, hidden = int(gates_in.shape[0]), int(gates_in.shape[1]), w_hh.in_features
        n, k = w_hh.padded_shape
        weights = _linear_struct(w_hh)
        out = torch.empty((steps, batch, hidden))
        for start in range(0, batch, MAX_ROWS):
            rows = min(MAX_ROWS, batch - start)
            gates = gates_in[:, start : start + rows].float().contiguous()
            scratch = {
                "quant": torch.zeros((rows, k), dtype=torch.int8),
                "row_scale": torch.zeros(rows),
                "quant_sum": torch.zeros((rows, k // BLOCK_K), dtype=torch.int32),
                "wide": torch.zeros((rows, n)),
                "normed": torch.zeros((rows, hidden)),
            }
            holder = Decoder(
                rows=rows,
                threads=torch.get_num_threads(),
                in_stride=k,
                out_stride=n,
                **{name: tensor.data_ptr() for name, tensor in scratch.items()},
            )
            part = torch.empty((steps, rows, hidden))
            self._lstm(ctypes.byref(holder), ctypes.byref(weights), gates.data_ptr(), steps, part.data_ptr())
            out[:, start : start + rows] = part
        return out

    def elu(self, x: torch.Tensor, out: torch.Tensor, alpha: float) -> None:
        """ELU of `x` into `out` (`srm_elu`; `out` may be `x`): float32 or bfloat16 tensors of one
        shape whose rows (the last dimension) are contiguous and evenly spaced (`rows_of`)."""
        source, target = rows_of(x), rows_of(out)
        if source is None or target is None or x.shape != out.shape:
            raise ValueError("srm_elu takes tensors of one shape with contiguous, evenly spaced rows")
        if x.numel() == 0:
            return
        length = int(x.shape[-1])
        self._elu(
            x.data_ptr(),
            source,
            out.data_ptr(),
            target,
            x.numel() // length,
            length,
            alpha,
            x.dtype == torch.bfloat16,
            out.dtype == torch.bfloat16,
            torch.get_num_threads(),
        )

    def convolve(
        self,
        conv: PackedConvolution,
        x: torch.Tensor,
        pad_left: int,
        pad_right: int,
        reflect: bool,
        elu_alpha: float | None = None,
    ) -> torch.Tensor:
        """`conv` (stride 1) of `x` (batch, channels, time), padded by `pad_left` and `pad_right`
        time steps (zeros, or mirrored where `reflect`: then time > either padding), after an ELU
        with `elu_alpha` if given: (batch, time out, out) float32 (`srm_conv`). `x` is float32,
        copied time-major first unless stored so (its channels contiguous, its steps evenly spaced)."""
        batch, channels, length = (int(size) for size in x.shape)
        if channels != conv.channels:
            raise ValueError(f"the convolution takes {conv.channels} channels, not {channels}")
        if reflect and length <= max(pad_left, pad_right):
            raise ValueError(f"mirrored padding of {max(pad_left, pad_right)} needs more than {length} steps")
        x = x.float()
        if x.stride(1) != 1 and channels > 1:
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        padded = pad_left + length + pad_right
        rows = padded - (conv.taps - 1) * conv.dilation
        out = torch.empty((batch, max(rows, 0), conv.out_features))
        if rows <= 0:
            return out
        # zeroed where the channels are odd: the pair's second input of the last channel
        quantised = (torch.zeros if conv.padded_channels != channels else torch.empty)(
            (padded, conv.padded_channels), dtype=torch.int16
        )
        scales, threads = torch.empty(padded), torch.get_num_threads()
        elu, alpha = elu_alpha is not None, 0.0 if elu_alpha is None else elu_alpha
        for index in range(batch):
            self._conv_quantize(
                x[index].data_ptr(), x.stride(2), length, channels, pad_left, pad_right, reflect, elu, alpha,
                quantised.data_ptr(), conv.padded_channels, scales.data_ptr(), threads,
            )  # fmt: skip
            self._conv(
                quantised.data_ptr(), scales.data_ptr(), conv.padded_channels, rows, conv.taps, conv.dilation,
                conv.padded_channels, conv.weight.data_ptr(), conv.scale.data_ptr(), _address(conv.bias),
                conv.padded_outputs, out[index].data_ptr(), conv.out_features, conv.out_features, threads,
            )  # fmt: skip
        return out

    def generate(self, run: "NativeRun", generation: "NativeGeneration", first: int, last: int) -> None:
        """Decode steps `first` to `last` - 1 of `generation` on `run`, extending its sequence."""
        self._generate(ctypes.byref(run.struct), ctypes.byref(generation.struct), run.x.data_ptr(), first, last)

    def step(self, run: "NativeRun", x: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoder step of `run` on embeddings `x` (rows, hidden) -> logits (rows, head outputs)."""
        run.x.copy_(x)
        self._step(ctypes.byref(run.struct), run.x.data_ptr(), pos)
        return run.logits


class _QuantizedRows:
    """The rows of `x` as the kernel's products take them for `lin`: int8, zero padded to its
    inputs, with each row's scale and its groups' sums."""

    def __init__(self, lin: PackedLinear, x: torch.Tensor) -> None:
        k = lin.padded_shape[1]
        rows = int(x.shape[0])
        q, row_scale = quantize_rows(x.float())
        self.quant = torch.zeros((rows, k), dtype=torch.int8)
        self.quant[:, : lin.in_features] = q
        self.quant_sum = self.quant.view(rows, k // BLOCK_K, BLOCK_K).sum(dim=-1, dtype=torch.int32)
        self.row_scale = row_scale.reshape(rows).contiguous()


class _Product:
    """The kernel's product of `lin` (its `weights` struct) with `count` of `inputs`' rows from
    `start` into `out`: each call runs it (it holds `lin` and everything else the pointers it
    passes point at, so it outlives its caller's references)."""

    def __init__(
        self,
        function: Any,
        lin: PackedLinear,
        weights: Linear,
        inputs: _QuantizedRows,
        start: int,
        count: int,
        out: torch.Tensor,
    ) -> None:
        self.function, self.lin, self.weights, self.inputs, self.out = function, lin, weights, inputs, out
        outputs, k = lin.padded_shape
        self.holder = Decoder(threads=torch.get_num_threads(), in_stride=k, rows=count)
        self.holder.quant = inputs.quant[start].data_ptr()
        self.holder.row_scale = inputs.row_scale[start].data_ptr()
        self.holder.quant_sum = inputs.quant_sum[start].data_ptr()
        self.arguments = (ctypes.byref(self.holder), ctypes.byref(weights), count, out.data_ptr(), outputs)

    def __call__(self) -> torch.Tensor:
        self.function(*self.arguments)
        return self.out


def rows_of(x: torch.Tensor) -> int | None:
    """How many elements apart the rows (last-dimension vectors) of `x` start, where each row is
    contiguous and they are evenly spaced, as a trimmed view's are; else None. At least 1 dimension."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        return None
    leading = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1], strict=True) if size > 1]
    if not leading:
        return int(x.shape[-1])
    for (_, outer), (size, inner) in pairwise(leading):
        if outer != size * inner:
            return None
    return int(leading[-1][1])


def _per_position(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised (..., capacity) array of one value per cached position, with KEY_TILE
    spare elements after its end: attention computes a whole tile's scores from these arrays,
    the positions past the last written one included (then discarded), so the last head's last
    tile reads up to KEY_TILE - 1 elements beyond its row."""
    count = math.prod(shape)
    return torch.empty(count + KEY_TILE, dtype=dtype)[:count].view(shape)


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
        """`folded_cross`: per layer, the folded cross-attention of the one prompt every
        conditional row reads (its takes), or None to run the projections and attend to `cross_k`
        / `cross_v`."""
        if rows > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows per step")
        if folded_cross is not None and (len(folded_cross) != len(layers) or not _one_prompt(cross_k, cross_v)):
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
        # KEY_TILE positions, four dimensions of a key side by side (see srm_layer.k_cache in srm.h).
        tiles = -(-capacity // KEY_TILE)
        if not head_dim_supported(head_dim):
            raise ValueError(f"attention heads need a multiple of 4 dimensions, at most {MAX_HEAD_DIM}")
        shape = (len(layers), rows, heads)
        # Every step reads each row's cache so far, front to back, as it does the weights: 2 MB pages.
        key_shape, value_shape = (*shape, tiles, head_dim // 4, KEY_TILE, 4), (*shape, capacity, head_dim)
        self.k_cache = huge_page_tensor(math.prod(key_shape), torch.int8).view(key_shape)
        self.v_cache = huge_page_tensor(math.prod(value_shape), torch.int8).view(value_shape)
        self.k_scale = _per_position((*shape, capacity), torch.float32)
        self.v_scale = _per_position((*shape, capacity), torch.float32)
        self.k_sum = _per_position((*shape, capacity), torch.int32)
        self.x = torch.empty((rows, hidden))
        self.logits = torch.empty((rows, head.padded_shape[0]))
        normed = torch.empty((rows, in_stride))
        quant = torch.zeros((rows, in_stride), dtype=torch.int8)
        row_scale = torch.empty(rows)
        quant_sum = torch.empty((rows, in_stride // BLOCK_K), dtype=torch.int32)
        wide = torch.empty((rows, out_stride))
        attn = torch.zeros((rows, in_stride))
        scores = torch.empty((rows * heads, max(cross_len, 1)))
        cross_weights = torch.empty((cond_rows * heads, value_text(cross_len)), dtype=torch.int8)
        cross_weight_scale = torch.empty(cond_rows * heads)
        mask = None if cross_mask is None else cross_mask.to(torch.uint8).contiguous()
        keys = [k.contiguous() for k in cross_k]
        values = [v.contiguous() for v in cross_v]
        # The C side holds raw pointers: keep every tensor it points to alive as long as the run.
        scratch = [normed, quant, row_scale, quant_sum, wide, attn, scores, cross_weights, cross_weight_scale]
        self._keep = [*scratch, mask, keys, values, layers, final_norm, head, folded_cross]
        self._layers = (Layer * len(layers))(
            *(
                Layer(
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
        self.struct = Decoder(
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
            final_ln_weight=final_norm.weight.data_ptr(),
            final_ln_bias=final_norm.bias.data_ptr(),
            head=_linear_struct(head),
            cross_mask=_address(mask),
            normed=normed.data_ptr(),
            quant=quant.data_ptr(),
            row_scale=row_scale.data_ptr(),
            quant_sum=quant_sum.data_ptr(),
            wide=wide.data_ptr(),
            attn=attn.data_ptr(),
            scores=scores.data_ptr(),
            cross_weights=cross_weights.data_ptr(),
            cross_weight_scale=cross_weight_scale.data_ptr(),
            logits=self.logits.data_ptr(),
            in_stride=in_stride,
            out_stride=out_stride,
        )

    def step(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoder step on embeddings `x` (rows, hidden) -> logits (rows, head outputs), reused next step."""
        return self.kernels.step(self, x, pos)

    def write_positions(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Positions 0 .. P - 1 of `layer`'s caches from keys and values (rows, heads, P, head_dim),
        each vector quantised as a step quantises the one it writes: what a prefill leaves for
        the steps after it."""
        rows, heads, length, head_dim = (int(size) for size in keys.shape)
        capacity = int(self.v_cache.shape[3])
        if length > capacity:
            raise ValueError(f"{length} positions given, the caches hold {capacity}")
        key_q, key_scale = quantize_rows(keys.float())
        tiles = -(-length // KEY_TILE)
        tiled = torch.zeros((rows, heads, tiles * KEY_TILE, head_dim), dtype=torch.int8)
        tiled[:, :, :length] = key_q
        # (position in tile, dimension) -> (dimension / 4, position in tile, dimension % 4): see srm.h
        tiled = tiled.view(rows, heads, tiles, KEY_TILE, head_dim // 4, 4).transpose(3, 4)
        self.k_cache[layer, :, :, :tiles] = tiled
        self.k_scale[layer, :, :, :length] = key_scale.squeeze(-1)
        self.k_sum[layer, :, :, :length] = key_q.sum(dim=-1, dtype=torch.int32)
        value_q, value_scale = quantize_rows(values.float())
        self.v_cache[layer, :, :, :length] = value_q
        self.v_scale[layer, :, :, :length] = value_scale.squeeze(-1)


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
            "scratch": torch.empty((prompts * codebooks, 3 * vocab)),
            "picked": torch.empty((prompts, codebooks), dtype=torch.long),
        }
        self.sequence = sequence
        # The C side holds raw pointers: keep every tensor it points to alive as long as this.
        self._keep = tensors
        self.struct = Generation(
            **{name: tensor.data_ptr() for name, tensor in tensors.items()},
            prompts=prompts,
            codebooks=codebooks,
            vocab=vocab,
            length=length,
            guidance=guidance,
            inv_temperature=inverse_temperature(temperature),
            top_k=top_k,
            pad_token=pad_token,
            sequence=sequence.data_ptr(),
        )


def inverse_temperature(temperature: float) -> float:
    """What the native sampler takes: 0 for greedy decoding (a temperature of 0 or less)."""
    return 0.0 if temperature <= 0 else 1.0 / temperature


def load(variant: Variant, directory: Path = SOURCE.parent) -> NativeKernels | None:
    """`variant`'s library in `directory`, or None when it has not been built or cannot be loaded.

    Raises `abi.AbiMismatchError` when the library's structs or constants are not the Python side's
    (calling it would read and write memory at the wrong offsets), or it lacks a function."""
    path = variant.path(directory)
    if not path.is_file():
        return None
    try:
        # torch is imported first, so the library's OpenMP runtime is torch's own (one thread pool).
        library = ctypes.CDLL(str(path))
    except OSError:
        logger.warning("native kernels could not be loaded", extra={"library": str(path)}, exc_info=True)
        return None
    abi.check(abi.read(library, str(path)), C_CONSTANTS, dots=variant.dots)
    abi.check_functions(library, str(path))
    return NativeKernels(library, variant)


class KernelSelectionError(RuntimeError):
    """`NATIVE_KERNELS` names a build this machine has not built or cannot run."""


def best(directory: Path = SOURCE.parent) -> NativeKernels | None:
    """The build `NATIVE_KERNELS` asks for (default `auto`: the best one this CPU runs), loaded
    once per process; None when none is built (and none was asked for by name)."""
    return select(get_settings().native_kernels, directory)


@cache
def select(name: str, directory: Path = SOURCE.parent) -> NativeKernels | None:
    """The build called `name`, or with `auto` the best one built for this CPU.

    A mismatched library raises `abi.AbiMismatchError` rather than giving way to the next build: it
    means stale builds or a struct edited on one side, which every build of the same sources shares.
    A build asked for by name that is unknown here, not built, or not runnable on this CPU raises
    `KernelSelectionError`: a benchmark of a forced build must never measure another."""
    if name != AUTO:
        return _named(name, directory)
    for variant in variants():
        if runnable(variant) and (kernels := load(variant, directory)) is not None:
            return kernels
    logger.warning("native kernels not built (make kernels); the int8 decoder runs in torch, slowly")
    return None


def _named(name: str, directory: Path) -> NativeKernels:
    builds = {variant.name: variant for variant in variants()}
    if name not in builds:
        raise KernelSelectionError(f"NATIVE_KERNELS={name!r}: this machine's builds are {', '.join(builds)}")
    variant = builds[name]
    if not runnable(variant):
        missing = ", ".join(sorted(variant.cpu_flags - cpu_flags()))
        raise KernelSelectionError(f"NATIVE_KERNELS={name!r}: this CPU lacks {missing}")
    kernels = load(variant, directory)
    if kernels is None:
        raise KernelSelectionError(f"NATIVE_KERNELS={name!r}: not built (make kernels)")
    return kernels


def runnable(variant: Variant) -> bool:
    """Whether this CPU has the instructions `variant` was compiled for."""
    return variant.cpu_flags <= cpu_flags()
