"""EnCodec decoding (codes -> audio) in plain torch modules, without importing transformers.

``EncodecAudioDecoder.from_transformers`` copies the weights and padding parameters of a transformers
``EncodecModel`` into small modules of this file; ``decode`` then reproduces
``EncodecModel.decode(codes, audio_scales=[None] * batch).audio_values`` bit for bit (same ops in the
same order) for unchunked, mono configs such as MusicGen's 32 kHz codec. The built object holds only
torch and this module's classes, so an artifact can describe it (``handler.musicgen.module_tree``)
and rebuild it where transformers is never imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

_PLAIN_NORMS = ("weight_norm", "none")

NativeConvolver = Callable[[torch.Tensor, int, int, bool, "float | None"], torch.Tensor]
"""A convolution run natively (``handler.native.convolution.NativeConvolution``): (input stored
time-major, padding left, padding right, mirrored or zeros, the alpha of an ELU to apply first or
None) -> (batch, time, out) float32."""

PHASE_PRODUCTS_MIN_CHANNELS = 1024
"""Input channels from which a float32 upsampling runs by phase as two matrix products rather than
one two-tap convolution: with 1024 (the 32 kHz codec's first upsampling, ~100 frames a chunk)
oneDNN's convolution took twice as long as the products, with AVX-512 and limited to AVX2 alike;
with 512 or fewer (thousands of steps a chunk) it was as fast or faster."""


def _plain_weight(source: Any) -> torch.Tensor:
    """A detached copy of a conv's effective weight (what a weight-norm parametrization computes, if any)."""
    weight: torch.Tensor = source.weight
    return weight.detach().clone()


def _plain_bias(source: Any) -> torch.Tensor | None:
    """A detached copy of a conv's bias, or None."""
    bias: torch.Tensor | None = source.bias
    return None if bias is None else bias.detach().clone()


def _assign_weights(conv: nn.Module, source: Any) -> None:
    """Give a conv built on the meta device the source conv's effective weight and bias."""
    conv.weight = nn.Parameter(_plain_weight(source), requires_grad=False)
    bias = _plain_bias(source)
    if bias is not None:
        conv.bias = nn.Parameter(bias, requires_grad=False)


def _channels_last_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in, taps) convolution weight as a one-row 2-D convolution's, stored channels last:
    oneDNN then convolves activations stored time-major without reordering them (see
    ``EncodecAudioDecoder.prepare_to_serve``)."""
    return weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _time_major_product(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`weight` (out, in) times every time step of `hidden` (batch, in, time), plus `bias`:
    (batch, time, out), one 2-D product with the bias added in it (torch's batched ``matmul`` of
    a strided input copied the weight per batch and at times expanded it per step)."""
    batch, channels, length = hidden.shape
    rows = hidden.transpose(1, 2).reshape(batch * length, channels)  # a copy only where uneven
    product = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
    return product.view(batch, length, -1)


def _time_major_phases(
    hidden: torch.Tensor, current: torch.Tensor, previous: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """(batch, time + 1, phases): position u is `current` times input u plus `previous` times input
    u - 1, plus `bias`; written by two products in place, the second adding to the first's output
    (no padded copy, no temporary sum)."""
    batch, _, length = hidden.shape
    phases = hidden.new_empty((batch, length + 1, int(current.shape[0])))
    for index in range(batch):
        rows, out = hidden[index].t(), phases[index]
        if bias is None:
            torch.mm(rows, current.t(), out=out[:length])
            out[length].zero_()
        else:
            torch.addmm(bias, rows, current.t(), out=out[:length])
            out[length].copy_(bias)
        out[1:].addmm_(rows, previous.t())
    return phases


def stored_time_major(x: torch.Tensor) -> bool:
    """Whether `x` (..., channels, time) is (..., time, channels) in memory, densely (the
    activations when serving: ``EncodecAudioDecoder.prepare_to_serve``)."""
    return x.dim() >= 2 and x.transpose(-1, -2).is_contiguous()


def _check_norm(layer: Any) -> None:
    norm_type = str(layer.norm_type)
    if norm_type not in _PLAIN_NORMS:
        raise NotImplementedError(f"EnCodec norm_type {norm_type!r} is not supported")


class PaddedConv1d(nn.Module):
    """Conv1d with EnCodec's asymmetric or causal padding (transformers' ``EncodecConv1d``)."""

    pointwise_weight: torch.Tensor | None = None
    """A one-tap convolution's weight as a matrix, once it runs as a product (``convolve_pointwise_as_product``)."""
    time_major_weight: torch.Tensor | None = None
    """The weight for activations stored time-major, once serving so (``compute_time_major``)."""
    native: NativeConvolver | None = None
    """What runs the convolution once serving in float32 natively
    (``EncodecAudioDecoder.run_convolutions_with``)."""
    elu_alpha: float | None = None
    """The ELU before this convolution, applied by ``native`` as it reads the input (no layer of its own)."""

    def __init__(self, conv: nn.Conv1d, causal: bool, pad_mode: str) -> None:
        super().__init__()
        self.conv = conv
        self.causal = causal
        self.pad_mode = pad_mode
        self.stride = int(conv.stride[0])
        self.kernel_span = (int(conv.kernel_size[0]) - 1) * int(conv.dilation[0]) + 1
        self.padding_total = self.kernel_span - self.stride
        self.pads_in_convolution = False

    @classmethod
    def from_transformers(cls, layer: Any) -> PaddedConv1d:
        """Copy of a transformers ``EncodecConv1d``."""
        _check_norm(layer)
        src = layer.conv
        conv = nn.Conv1d(
            src.in_channels,
            src.out_channels,
            src.kernel_size[0],
            stride=src.stride[0],
            dilation=src.dilation[0],
            groups=src.groups,
            bias=src.bias is not None,
            device="meta",
        )
        _assign_weights(conv, src)
        return cls(conv, bool(layer.causal), str(layer.pad_mode))

    def _pad(self, hidden: torch.Tensor, left: int, right: int) -> torch.Tensor:
        if self.pad_mode != "reflect":
            return F.pad(hidden, (left, right), self.pad_mode, 0.0)
        # Reflection needs more samples than the padding: zero-extend first, then drop the extension.
        length = hidden.shape[-1]
        max_pad = max(left, right)
        extra = 0
        if length <= max_pad:
            extra = max_pad - length + 1
            hidden = F.pad(hidden, (0, extra))
        padded = F.pad(hidden, (left, right), "reflect", 0.0)
        return padded[..., : padded.shape[-1] - extra]

    def pad_in_convolution(self) -> None:
        """Let the convolution zero-pad (no padded copy of the input), then recompute the few edge
        outputs the padding mode changes. Only for stride 1 with equal padding on both sides."""
        self.pads_in_convolution = self.stride == 1 and not self.causal and self.padding_total % 2 == 0

    def convolve_pointwise_as_product(self) -> None:
        """Run a one-tap convolution as the matrix product it is: oneDNN's convolution took 3-6x as
        long for these shapes (and in bfloat16 copied its input and output to another layout)."""
        conv = self.conv
        if (conv.kernel_size[0], conv.stride[0], conv.dilation[0], conv.groups) == (1, 1, 1, 1):
            self.pointwise_weight = conv.weight.detach()[:, :, 0].contiguous()

    def compute_time_major(self) -> None:
        """Take and give activations stored time-major (``EncodecAudioDecoder.prepare_to_serve``)."""
        if self.conv.groups == 1:
            self.time_major_weight = _channels_last_kernel(self.conv.weight)

    def _forward_padding_in_convolution(self, hidden: torch.Tensor) -> torch.Tensor:
        side = self.padding_total // 2
        conv = self.conv
        if conv.out_channels == 1 and conv.groups == 1 and conv.dilation[0] == 1:
            out = self._one_output_channel(hidden, side)
        else:
            out = self._convolve(hidden, padding=side)
        if side == 0 or self.pad_mode == "constant":
            return out
        # The edge outputs see the padding: recompute them from their own inputs, padded by the mode.
        span = self.kernel_span - 1
        out[..., :side] = self._convolve(self._pad(hidden[..., :span], side, 0), padding=0)
        out[..., -side:] = self._convolve(self._pad(hidden[..., -span:], 0, side), padding=0)
        return out

    def runs_natively(self) -> bool:
        """Whether ``native`` can run this convolution: stride 1, no groups, zero or mirrored padding."""
        conv = self.conv
        return (conv.stride[0], conv.groups) == (1, 1) and self.pad_mode in ("reflect", "constant")

    def _paddings(self, length: int) -> tuple[int, int]:
        """The padding left and right of `length` steps (the right one with the extra that makes
        the last stride window full)."""
        extra = -length % self.stride
        if self.causal:
            return self.padding_total, extra
        right = self.padding_total // 2
        return self.padding_total - right, right + extra

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pad (with the extra right padding that makes the last stride window full) and convolve."""
        left, right = self._paddings(int(hidden.shape[-1]))
        reflect = self.pad_mode == "reflect"
        if self.native is not None and (not reflect or hidden.shape[-1] > max(left, right)):
            return self.native(hidden, left, right, reflect, self.elu_alpha).transpose(1, 2)
        if self.elu_alpha is not None:
            hidden = F.elu(hidden, self.elu_alpha)
        if self.pads_in_convolution and hidden.shape[-1] >= self.kernel_span:
            return self._forward_padding_in_convolution(hidden)
        return self._convolve(self._pad(hidden, left, right), padding=0)

    def _one_output_channel(self, hidden: torch.Tensor, side: int) -> torch.Tensor:
        """The zero-padded convolution to one channel (EnCodec's last layer) as one matrix product
        and shifted sums: oneDNN takes about four times as long for a single output channel."""
        weight, bias = self.conv.weight[0], self.conv.bias
        # (batch, kernel, time): each tap's contribution, as a product over the layout the
        # activations are stored in (the other order copied time-major activations first), with
        # the taps' weights each contiguous (MKL took twice as long with the (in, kernel) matrix)
        if stored_time_major(hidden):
            taps = F.linear(hidden.transpose(1, 2), weight.t().contiguous()).transpose(1, 2)
        else:
            taps = torch.matmul(weight.t(), hidden)
        length = int(hidden.shape[-1])
        out = taps[:, side].clone() if bias is None else taps[:, side] + bias
        for k in range(weight.shape[1]):
            shift = k - side
            if shift < 0:
                out[:, -shift:] += taps[:, k, : length + shift]
            elif shift > 0:
                out[:, : length - shift] += taps[:, k, shift:]
        return out.unsqueeze(1)

    def _convolve(self, hidden: torch.Tensor, padding: int) -> torch.Tensor:
        conv = self.conv
        kernel = self.time_major_weight
        if self.pointwise_weight is not None and padding == 0:
            return _time_major_product(hidden, self.pointwise_weight, conv.bias).transpose(1, 2)
        if kernel is not None:
            stride, dilation = (1, conv.stride[0]), (1, conv.dilation[0])
            row = F.conv2d(hidden.unsqueeze(2), kernel, conv.bias, stride, (0, padding), dilation)
            return row.squeeze(2)
        out: torch.Tensor = F.conv1d(hidden, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
        return out


class TrimmedConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed of its fixed padding (transformers' ``EncodecConvTranspose1d``)."""

    phase_weight: torch.Tensor | None = None
    """The same upsampling as a two-tap convolution once serving (see ``convolve_by_phase``)."""
    phase_bias: torch.Tensor | None = None
    phase_products: tuple[torch.Tensor, torch.Tensor] | None = None
    """The two taps of ``phase_weight`` as matrices (input u, input u - 1), when run as products."""
    time_major_weight: torch.Tensor | None = None
    """``phase_weight`` as a one-row 2-D convolution's, channels last (``convolve_by_phase``)."""
    native: NativeConvolver | None = None
    """What runs the two-tap convolution by phase once serving in float32 natively
    (``EncodecAudioDecoder.run_convolutions_with``)."""
    elu_alpha: float | None = None
    """The ELU before this upsampling, applied by ``native`` as it reads the input (no layer of its own)."""

    def __init__(self, conv: nn.ConvTranspose1d, causal: bool, trim_right_ratio: float) -> None:
        super().__init__()
        self.conv = conv
        padding_total = int(conv.kernel_size[0]) - int(conv.stride[0])
        right = math.ceil(padding_total * trim_right_ratio) if causal else padding_total // 2
        self.trim_left = padding_total - right
        self.trim_right = right

    @classmethod
    def from_transformers(cls, layer: Any) -> TrimmedConvTranspose1d:
        """Copy of a transformers ``EncodecConvTranspose1d``."""
        _check_norm(layer)
        src = layer.conv
        conv = nn.ConvTranspose1d(
            src.in_channels,
            src.out_channels,
            src.kernel_size[0],
            stride=src.stride[0],
            padding=src.padding[0],
            output_padding=src.output_padding[0],
            groups=src.groups,
            bias=src.bias is not None,
            dilation=src.dilation[0],
            device="meta",
        )
        _assign_weights(conv, src)
        return cls(conv, bool(layer.causal), float(layer.trim_right_ratio))

    def trim_in_convolution(self) -> None:
        """Let the transposed convolution leave out the trimmed samples itself (its padding, plus
        output padding for a left trim longer than the right one), so no strided view is copied
        later. Not for causal trims, which fall on the right."""
        conv = self.conv
        shift = self.trim_left - self.trim_right
        if (conv.padding[0], conv.output_padding[0]) == (0, 0) and 0 <= shift < max(conv.stride[0], conv.dilation[0]):
            conv.padding, conv.output_padding = (self.trim_left,), (shift,)
            self.trim_left = self.trim_right = 0

    def convolve_by_phase(self, products: bool = False) -> bool:
        """Compute the upsampling as a plain convolution: with a kernel twice the stride s, output
        sample u s + p is input u times tap p plus input u - 1 times tap p + s, so a two-tap
        convolution to s times the channels, interleaved, gives every output (oneDNN's transposed
        convolution took up to twice as long on CPU). `products`: the two taps as two matrix
        products instead (in bfloat16, 2-4x faster than oneDNN's transposed convolution, which was
        the faster of it and the two-tap convolution there). Only for that shape; False otherwise."""
        conv = self.conv
        stride, kernel = int(conv.stride[0]), int(conv.kernel_size[0])
        plain = (conv.padding[0], conv.output_padding[0], conv.dilation[0], conv.groups) == (0, 0, 1, 1)
        if kernel != 2 * stride or not plain:
            return False
        weight = conv.weight.detach()  # (in, out, kernel)
        taps = torch.stack([weight[:, :, stride:], weight[:, :, :stride]], dim=-1)  # tap 0 reads input u - 1
        # Rows phase by phase (all channels of phase 0, then of phase 1...): on activations stored
        # time-major the (time, phase, channel) result is then the interleaved output as it is.
        self.phase_weight = taps.permute(2, 1, 0, 3).reshape(-1, weight.shape[0], 2).contiguous()
        self.time_major_weight = _channels_last_kernel(self.phase_weight)
        self.phase_bias = None if conv.bias is None else conv.bias.detach().repeat(stride)
        if products:
            self.phase_products = (self.phase_weight[:, :, 1].contiguous(), self.phase_weight[:, :, 0].contiguous())
        return True

    def _forward_by_phase(self, hidden: torch.Tensor) -> torch.Tensor:
        """The upsampling by phase, its output stored time-major (the phases interleaved by a view)."""
        stride = int(self.conv.stride[0])
        if self.native is not None:
            # tap 0 reads input u - 1: one zero step each side gives every position 0..time
            phases = self.native(hidden, 1, 1, False, self.elu_alpha)
        elif self.phase_products is not None:
            phases = _time_major_phases(hidden, *self.phase_products, self.phase_bias)
        else:
            assert self.time_major_weight is not None
            row = F.conv2d(hidden.unsqueeze(2), self.time_major_weight, self.phase_bias, padding=(0, 1))
            phases = row.squeeze(2).transpose(1, 2)
        batch, positions, _ = phases.shape
        out = phases.reshape(batch, positions * stride, -1).transpose(1, 2)
        return out[..., self.trim_left : out.shape[-1] - self.trim_right]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Upsample, then trim."""
        if self.native is not None or self.time_major_weight is not None:
            return self._forward_by_phase(hidden)
        out: torch.Tensor = self.conv(hidden)
        if self.trim_left == self.trim_right == 0:
            return out
        return out[..., self.trim_left : out.shape[-1] - self.trim_right]


class SkipLSTM(nn.Module):
    """LSTM over (batch, channels, time) with a skip connection (transformers' ``EncodecLSTM``)."""

    recurrence: Callable[[torch.Tensor], torch.Tensor] | None = None
    """What runs ``lstm(x)[0]`` instead of torch once serving (``handler.native.lstm.NativeLSTM``)."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    @classmethod
    def from_transformers(cls, layer: Any) -> SkipLSTM:
        """Copy of a transformers ``EncodecLSTM``."""
        src: nn.LSTM = layer.lstm
        lstm = nn.LSTM(
            src.input_size,
            src.hidden_size,
            src.num_layers,
            bias=src.bias,
            batch_first=src.batch_first,
            dropout=src.dropout,
            bidirectional=src.bidirectional,
            proj_size=src.proj_size,
            device="meta",
        )
        state = {name: value.detach().clone() for name, value in src.state_dict().items()}
        lstm.load_state_dict(state, assign=True)
        lstm.requires_grad_(False)
        return cls(lstm)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """LSTM over time plus its input, back in convolutional layout."""
        hidden = hidden.permute(2, 0, 1)
        recurrent = self.lstm(hidden)[0] if self.recurrence is None else self.recurrence(hidden)
        hidden = recurrent + hidden
        return hidden.permute(1, 2, 0)


class ResidualBlock(nn.Module):
    """SEANet residual block: ``shortcut(x) + block(x)`` (transformers' ``EncodecResnetBlock``)."""

    def __init__(self, block: nn.Sequential, shortcut: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    @classmethod
    def from_transformers(cls, layer: Any) -> ResidualBlock:
        """Copy of a transformers ``EncodecResnetBlock``."""
        block = nn.Sequential(*(_convert_layer(sub) for sub in layer.block))
        shortcut = nn.Identity() if isinstance(layer.shortcut, nn.Identity) else _convert_layer(layer.shortcut)
        return cls(block, shortcut)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output plus the shortcut of its input."""
        residual = hidden
        hidden = self.block(hidden)
        # in place: the block's last layer gives a fresh tensor (the sum is the same either way round)
        out: torch.Tensor = hidden.add_(self.shortcut(residual))
        return out


def _inputs_read(layer: nn.Module, first: int, last: int) -> tuple[int, int]:
    """The first and last input samples that `layer`'s outputs `first`..`last` depend on (edge
    padding aside). Layers other than convolutions, residual blocks and sequences are elementwise."""
    if isinstance(layer, nn.Sequential):
        for sub in reversed(layer):
            first, last = _inputs_read(sub, first, last)
        return first, last
    if isinstance(layer, ResidualBlock):
        block, shortcut = _inputs_read(layer.block, first, last), _inputs_read(layer.shortcut, first, last)
        return min(block[0], shortcut[0]), max(block[1], shortcut[1])
    if isinstance(layer, PaddedConv1d):
        left = layer.padding_total if layer.causal else layer.padding_total - layer.padding_total // 2
        return first * layer.stride - left, last * layer.stride - left + layer.kernel_span - 1
    if isinstance(layer, TrimmedConvTranspose1d):
        conv = layer.conv
        stride, trim = int(conv.stride[0]), layer.trim_left + int(conv.padding[0])
        span = (int(conv.kernel_size[0]) - 1) * int(conv.dilation[0]) + 1
        # untrimmed output n sums the inputs i with n - span < i * stride <= n
        return -(-(first + trim - span + 1) // stride), (last + trim) // stride
    return first, last


def _convert_layer(layer: nn.Module) -> nn.Module:
    """The plain-torch copy of one layer of transformers' ``EncodecDecoder``."""
    from transformers.models.encodec import modeling_encodec as encodec

    if isinstance(layer, encodec.EncodecConv1d):
        return PaddedConv1d.from_transformers(layer)
    if isinstance(layer, encodec.EncodecConvTranspose1d):
        return TrimmedConvTranspose1d.from_transformers(layer)
    if isinstance(layer, encodec.EncodecLSTM):
        return SkipLSTM.from_transformers(layer)
    if isinstance(layer, encodec.EncodecResnetBlock):
        return ResidualBlock.from_transformers(layer)
    if isinstance(layer, nn.ELU):
        return nn.ELU(alpha=layer.alpha)
    raise NotImplementedError(f"unsupported EnCodec decoder layer {type(layer).__name__}")


class EncodecAudioDecoder(nn.Module):
    """EnCodec's quantizer decode and SEANet decoder as plain torch modules (codes -> audio)."""

    codebooks: torch.Tensor
    """Codebook embeddings, ``(codebooks, codebook_size, codebook_dim)``."""
    hop_length: int
    """Audio samples per code frame (product of the upsampling ratios)."""
    sampling_rate: int
    """Audio samples per second."""
    frame_rate: int
    """Code frames per second."""

    compute_dtype: torch.dtype
    """What the frame and upsampling layers compute in (see ``prepare_to_serve``); the output layers stay float32."""
    prepared_to_serve: bool
    """Whether ``prepare_to_serve`` has run: bit-exactness with transformers traded for speed."""

    def __init__(
        self,
        codebooks: torch.Tensor,
        frame_layers: nn.Sequential,
        upsample_layers: nn.Sequential,
        output_layers: nn.Sequential,
        hop_length: int,
        sampling_rate: int,
        frame_rate: int,
    ) -> None:
        super().__init__()
        self.register_buffer("codebooks", codebooks)
        self.frame_layers = frame_layers
        self.upsample_layers = upsample_layers
        self.output_layers = output_layers
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate
        self.frame_rate = frame_rate
        self.compute_dtype = torch.float32
        self.prepared_to_serve = False

    @classmethod
    def from_transformers(cls, model: Any) -> EncodecAudioDecoder:
        """Copy of a transformers ``EncodecModel``'s decoding path (weight norms folded or not)."""
        config = model.config
        if config.chunk_length_s is not None:
            raise NotImplementedError("chunked EnCodec configs (chunk_length_s set) are not supported")
        if int(config.audio_channels) != 1:
            raise NotImplementedError("only mono EnCodec configs are supported")
        if str(config.norm_type) not in _PLAIN_NORMS:
            raise NotImplementedError(f"EnCodec norm_type {config.norm_type!r} is not supported")
        if len(model.quantizer.layers) == 0:
            raise ValueError("the EnCodec model has no quantizer codebooks")
        # Normal tensors even when called under inference_mode: the copy may be saved or used anywhere.
        with torch.inference_mode(False), torch.no_grad():
            codebooks = torch.stack([layer.codebook.embed.detach().clone() for layer in model.quantizer.layers])
            layers = [_convert_layer(layer) for layer in model.decoder.layers]
        recurrent = [i for i, layer in enumerate(layers) if isinstance(layer, SkipLSTM)]
        if len(recurrent) != 1:
            raise NotImplementedError(f"expected one LSTM in the EnCodec decoder, found {len(recurrent)}")
        split = recurrent[0] + 1
        if not isinstance(layers[-1], PaddedConv1d):
            raise NotImplementedError("expected the EnCodec decoder to end in a convolution")
        hop_length = math.prod(int(ratio) for ratio in config.upsampling_ratios)
        decoder = cls(
            codebooks,
            nn.Sequential(*layers[:split]),
            nn.Sequential(*layers[split:-2]),
            nn.Sequential(*layers[-2:]),
            hop_length,
            int(config.sampling_rate),
            int(config.frame_rate),
        )
        return decoder.eval()

    def frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(1, batch, codebooks, frames)`` -> hidden states at the frame rate, up to the LSTM."""
        if codes.dim() != 4 or codes.shape[0] != 1:
            raise ValueError(f"expected codes of shape (1, batch, codebooks, frames), got {tuple(codes.shape)}")
        per_codebook = codes[0].transpose(0, 1)
        if per_codebook.shape[0] > self.codebooks.shape[0]:
            raise ValueError(f"{per_codebook.shape[0]} codebooks given, the codec has {self.codebooks.shape[0]}")
        # Same ops in the same order as transformers' quantizer (a 0-d zero, then one sum per codebook):
        # the hidden state's memory layout, and with it the convolutions' rounding, stays the same.
        hidden = torch.full((), 0.0, device=codes.device)
        for index, indices in enumerate(per_codebook):
            hidden = hidden + F.embedding(indices, self.codebooks[index]).permute(0, 2, 1)
        out: torch.Tensor = self.frame_layers(hidden.to(self.compute_dtype))
        return out.float()

    def upsample(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states from ``frames`` -> audio ``(batch, 1, frames * hop_length)``."""
        upsampled = self.upsample_layers(hidden.to(self.compute_dtype))
        out: torch.Tensor = self.output_layers(upsampled.float())
        return out

    @property
    def context_frames(self) -> int:
        """Frames of context each side of a chunk of frames that ``upsample`` then gives the whole
        clip's audio for: the upsampling's reach (one frame for the 32 kHz codec)."""
        frame = 1 << 20  # any frame far from the clip's edges
        first, last = frame * self.hop_length, (frame + 1) * self.hop_length - 1
        for layers in (self.output_layers, self.upsample_layers):
            first, last = _inputs_read(layers, first, last)
        return max(frame - first, last - frame, 0)

    def prepare_to_serve(self, dtype: torch.dtype) -> None:
        """Trade bit-exactness with transformers for speed: the same audio up to rounding.

        The frame and upsampling layers (the LSTM, all but the last convolution) compute in
        `dtype`: bfloat16 halves the decode time on CPUs with bf16 dot products, about 40-45 dB
        from float32 (musicgen-small's shape, random weights); the output layers stay float32,
        which in bf16 cost as much and round the samples themselves. Convolutions pad and trim
        inside oneDNN instead of copying their inputs and outputs, one-tap ones are matrix
        products, transposed ones become two matrix products in bfloat16 and in float32 from
        ``PHASE_PRODUCTS_MIN_CHANNELS`` input channels, plain convolutions otherwise
        (``TrimmedConvTranspose1d.convolve_by_phase``), and ELUs whose input nothing else
        reads work in place. Activations are stored time-major, (batch, time, channels) in memory,
        though still shaped (batch, channels, time): oneDNN's convolutions take and give that layout
        without reordering (in bfloat16 2.5-4x faster than on channel-major activations, which
        they reordered to it and back), matrix products give it as readily, and the upsampling's
        phases interleave without a copy. Not undone: a decoder prepared to serve is never saved.
        """
        self.frame_layers.to(dtype)
        self.upsample_layers.to(dtype)
        self.compute_dtype = dtype
        for module in self.modules():
            if isinstance(module, PaddedConv1d):
                module.pad_in_convolution()
                module.convolve_pointwise_as_product()
                module.compute_time_major()
            elif isinstance(module, TrimmedConvTranspose1d):
                products = dtype != torch.float32 or module.conv.in_channels >= PHASE_PRODUCTS_MIN_CHANNELS
                if not module.convolve_by_phase(products=products):
                    module.trim_in_convolution()
            elif isinstance(module, nn.Sequential):
                # A layer's input past the first is the previous layer's fresh output.
                for layer in list(module)[1:]:
                    if isinstance(layer, nn.ELU):
                        layer.inplace = True
        self.prepared_to_serve = True

    def run_convolutions_with(
        self, make: Callable[[torch.Tensor, torch.Tensor | None, int], NativeConvolver | None]
    ) -> None:
        """Run the upsampling layers' convolutions with ``make(weight, bias, dilation)`` where it
        gives one (stride 1, over activations stored time-major; transposed ones by phase:
        ``prepare_to_serve`` first, in float32), and fold each ELU right before one into it: the
        ELU is applied as the convolution reads its input, a pass over the activations fewer."""
        if not self.prepared_to_serve or self.compute_dtype != torch.float32:
            raise ValueError("native convolutions run on a decoder prepared to serve in float32")
        # not the frames' first convolution (5 ms in torch): run natively (3 ms), every later
        # decode took ~50,000 page faults (none without) and was 10% slower
        for module in self.upsample_layers.modules():
            if isinstance(module, PaddedConv1d) and module.runs_natively():
                conv = module.conv
                module.native = make(conv.weight.detach(), _plain_bias(conv), int(conv.dilation[0]))
            elif isinstance(module, TrimmedConvTranspose1d) and module.phase_weight is not None:
                module.native = make(module.phase_weight, module.phase_bias, 1)
                if module.native is not None:  # its float32 copies for torch go unused (64 MB for the first)
                    module.phase_products = module.time_major_weight = None
        for module in list(self.upsample_layers.modules()):
            if not isinstance(module, nn.Sequential):
                continue
            for index in range(len(module) - 1):
                layer, after = module[index], module[index + 1]
                if not isinstance(layer, nn.ELU) or not isinstance(after, PaddedConv1d | TrimmedConvTranspose1d):
                    continue
                if after.native is not None and after.elu_alpha is None:
                    after.elu_alpha = float(layer.alpha)
                    module[index] = nn.Identity()

    def run_elus_with(self, make: Callable[[float, bool, torch.dtype | None], nn.Module]) -> None:
        """Swap every ELU for ``make(alpha, inplace, dtype)`` (``handler.native.elu.NativeELU``).
        The output layers' leading ELU becomes the upsampling layers' last, made to return float32:
        it converts their output for the output layers in its own pass instead of a copy, and
        works in place when they are float32 already, if its input is a layer's fresh output (the
        last residual block's: a new 17 MB output a chunk cost fresh pages), not the frames."""
        leading = self.output_layers[0]
        if isinstance(leading, nn.ELU):
            fresh = len(self.upsample_layers) > 0 and not isinstance(self.upsample_layers[-1], nn.ELU)
            self.upsample_layers.append(make(float(leading.alpha), fresh, torch.float32))
            self.output_layers = nn.Sequential(*list(self.output_layers)[1:])
        for module in list(self.modules()):
            if isinstance(module, nn.Sequential):
                for index, layer in enumerate(module):
                    if isinstance(layer, nn.ELU):
                        module[index] = make(float(layer.alpha), bool(layer.inplace), None)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(1, batch, codebooks, frames)`` -> audio ``(batch, 1, samples)``."""
        return self.upsample(self.frames(codes))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Same as ``decode``."""
        return self.decode(codes)
