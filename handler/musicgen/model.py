"""MusicGen as served: the parts rebuilt from tensors and config, and our own decode loop over them.

``MusicgenModel`` holds the text encoder, the decoder (``DecoderLayer``s, the embedding tables, the
fused codebook heads) and EnCodec's decoder as plain torch modules, and runs the autoregressive loop
itself instead of ``model.generate``. It is built either from an artifact (``handler.musicgen.artifact``)
or, once, from a transformers ``MusicgenForConditionalGeneration`` (``from_transformers``, which the
loaders and the bake use; transformers is imported only there):

* the text encoder runs once a request, and every layer's cross-attention keys and values with it;
  with one prompt (any number of takes of it) and the native kernel they are folded into the text
  (``FoldedCrossAttention``) when that saves more bytes over the clip than it costs;
* the self-attention KV cache is preallocated for the whole clip;
* classifier-free guidance runs as one batch (cond rows, then uncond rows), as transformers does:
  the unconditional rows' cross-attention output is exactly zero, so it is skipped;
* the codebook delay pattern is ``handler.musicgen.pattern``'s (transformers'
  ``build_delay_pattern_mask``);
* sampling is CFG -> temperature -> top-k -> softmax -> draw from a ``torch.Generator`` seeded with
  an integer (same seed => same codes; the native loop draws its uniforms once a window);
  ``temperature == 0`` is greedy argmax;
* several takes of one prompt decode as one batch (their rows read the weights once a step), take
  ``j`` drawing from its own generator, seeded ``seed + j`` (``handler.generation.take_seed``);
* clips longer than one window (``handler.musicgen.windows``) are made window after window, each
  continuing the codes of the previous one's overlap: that prompt is prefilled into the caches in
  batched products, all its positions at once, then decoding carries on from its end;
* ``"int8"`` (default) and ``"int4"`` decoders run each step in ``handler.native``'s kernel (ten steps
  a call, sampling included); where no library is built the same products run in torch.
  ``"bf16"`` casts the decoder to bfloat16, ``"fp32"`` keeps it exact (greedy codes match
  ``model.generate`` bit for bit);
* the text encoder (``handler.musicgen.text_encoder``, int8 through ``KernelLinear`` when the decoder
  is quantized) and EnCodec's decoder (``handler.musicgen.audio_decoder``, chunked) reproduce
  transformers' arithmetic without its objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from handler.allocator import keep_freed_memory
from handler.cpu import cpu_has_bf16, cpu_quota_threads
from handler.generation import take_seed
from handler.musicgen.audio_decoder import EncodecAudioDecoder, SkipLSTM
from handler.musicgen.config import ModelConfig
from handler.musicgen.decoder_layer import DecoderLayer, convert_linears, fuse_linears
from handler.musicgen.kernel_linear import quantize_linears
from handler.musicgen.pattern import codes_from_sequence, delay_forced, given_positions, sequence_from_codes
from handler.musicgen.text_encoder import T5TextEncoder
from handler.musicgen.windows import Window, WindowShape
from handler.native import packing, runtime
from handler.native.build import PLAIN
from handler.native.convolution import NativeConvolution
from handler.native.elu import NativeELU
from handler.native.lstm import NativeLSTM
from handler.native.packing import FoldedCrossAttention, Int4Linear, Int8Linear
from handler.native.runtime import NativeGeneration, NativeRun
from handler.settings import QUANTIZED, Precision

NATIVE_STEPS_PER_CALL = 10
"""Decode steps per call into native code: progress is reported (and Python runs) between calls."""
DECODE_CHUNK_FRAMES = 100
"""EnCodec frames decoded at a time after the LSTM (2 s of audio at 50 frames/s)."""


@dataclass
class _CrossKV:
    k: list[torch.Tensor]  # per layer (B, H, S, hd)
    v: list[torch.Tensor]
    mask: torch.Tensor | None  # (B, 1, 1, S) bool, None if no padding


@dataclass
class _State:
    cross: _CrossKV
    k_cache: torch.Tensor  # (layers, rows, H, L, hd), preallocated for the whole clip
    v_cache: torch.Tensor
    cross_out: torch.Tensor  # (rows, 1, D); uncond rows stay exactly zero
    rows: int
    cond_rows: int
    native: NativeRun | None  # the native step's own caches and scratch; None runs the torch step


@dataclass(frozen=True)
class _Sampling:
    """How one generation picks its tokens."""

    guidance: float | None  # classifier-free guidance scale; None: no unconditional rows
    temperature: float  # <= 0: greedy
    top_k: int
    generators: tuple[torch.Generator, ...]  # one per take: each take's draws depend on its seed alone

    @classmethod
    def seeded(cls, guidance: float | None, temperature: float, top_k: int, seed: int, takes: int) -> _Sampling:
        """Take ``j`` draws from a generator seeded ``take_seed(seed, j)``."""
        seeds = (take_seed(seed, j) for j in range(takes))
        return cls(guidance, temperature, top_k, tuple(torch.Generator().manual_seed(s) for s in seeds))

    def uniforms(self, steps: int, prompts: int, codebooks: int) -> torch.Tensor:
        """(steps, takes * prompts, codebooks) uniforms for the native sampler, take after take."""
        return torch.cat([torch.rand((steps, prompts, codebooks), generator=g) for g in self.generators], dim=1)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One index per row of `probs` (takes * prompts * codebooks, k), each take from its own generator."""
        per_take = probs.view(len(self.generators), -1, probs.shape[-1])
        picks = [torch.multinomial(part, 1, generator=g) for part, g in zip(per_take, self.generators, strict=True)]
        return torch.cat(picks)


FOLD_BYTES_PER_MULTIPLY_ADD = 2
"""Fold a request's cross-attention when the bytes that saves its steps are at least this many per
multiply-add of folding. The 2-vCPU Zen 4 of the seventh to twelfth sessions streams 35-65 GB/s
and folds at ~28-60 G multiply-adds a second (musicgen-small and a 14-token prompt: 19-20 ms with
AVX-512, 27 ms held to AVX2): the break-even is 0.6-2.3 bytes, so 2 folds only what pays even at
the slow end (with `int8`, a 14-token prompt's clips of ~1 s or more, a 48-token one's of ~8 s)."""

StepCallback = Callable[[int, int], None] | None
"""Called with (steps done, steps in all) as decoding goes."""


Materialize = Callable[[str], None]
"""Called with the dotted name of a part of a transformers model (e.g. ``"text_encoder"``) before
that part is converted: loads its weights into it when the model was built without them."""


def _all_in_place(part: str) -> None:
    """For a model whose weights are all loaded already."""


class MusicgenModel:
    """The whole model as served: text encoder, decoder and EnCodec's decoder, and the decode
    loop over them (see the module docs)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        embed: torch.Tensor,
        positions: torch.Tensor,
        layers: Sequence[DecoderLayer],
        final_norm: nn.Module,
        lm_head: nn.Module,
        text_encoder: T5TextEncoder,
        text_projection: nn.Module | None,
        audio_decoder: EncodecAudioDecoder,
        native: bool = True,
    ) -> None:
        """Assemble converted parts: `embed` (codebooks * (vocab + 1), hidden), one table per
        codebook; `positions` (max positions, hidden); `layers` with Linear layers already in
        `config.precision`; `text_projection` maps the text encoder's width to the decoder's."""
        self.config = config
        self.precision: Precision = config.precision
        self.num_codebooks = config.num_codebooks
        self.vocab_size = config.vocab_size
        self.hidden = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.max_positions = config.max_positions
        self.pad_token_id = config.pad_token_id
        self.start_token_id = config.start_token_id
        self.top_k = config.top_k
        self.sampling_rate = config.sampling_rate
        self.frame_rate = config.frame_rate
        self.dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        # The kernel implements exactly this layer: int8 or int4 weights, pre-norm, GELU (erf).
        self.native = (
            native
            and config.precision in QUANTIZED
            and config.activation == "gelu"
            and runtime.head_dim_supported(self.head_dim)
        )
        self.embed = embed
        self.embed_offsets = (torch.arange(self.num_codebooks, dtype=torch.long) * (self.vocab_size + 1)).view(1, -1)
        self.positions = positions
        self._layers: list[DecoderLayer] = list(layers)
        self.layers = nn.ModuleList(self._layers)
        self.final_ln = final_norm
        self.lm_head = lm_head
        self.text_encoder = text_encoder
        self.enc_to_dec_proj = text_projection
        self.audio_decoder = audio_decoder
        self._cross_projections: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_transformers(
        cls,
        model: Any,
        precision: Precision = "int8",
        native: bool = True,
        materialize: Materialize = _all_in_place,
    ) -> MusicgenModel:
        """Convert `model`, a transformers ``MusicgenForConditionalGeneration``, consuming it: each
        part's original weights are released once converted, so memory holds about one copy.
        `materialize` loads each part's weights just before it is converted (see `Materialize`)."""
        config = ModelConfig.from_transformers(model.config, model.generation_config, precision)
        torch.set_num_threads(cpu_quota_threads())
        model.eval()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        decoder: Any = model.decoder.model.decoder
        with torch.no_grad():
            materialize("decoder.model.decoder.embed_tokens")
            embed = torch.cat([e.weight.detach() for e in decoder.embed_tokens], dim=0).to(dtype)
            decoder.embed_tokens = nn.ModuleList()
            materialize("decoder.model.decoder.embed_positions")
            positions = decoder.embed_positions.weights.detach().to(dtype)
            materialize("decoder.model.decoder.layer_norm")
            final_norm: nn.Module = decoder.layer_norm.to(dtype)
            layers = []
            for i in range(len(decoder.layers)):
                materialize(f"decoder.model.decoder.layers.{i}")
                layer = DecoderLayer.from_transformers(decoder.layers[i])
                decoder.layers[i] = nn.Identity()  # the originals go: their weights now live in `layer`
                convert_linears(layer, precision)
                layers.append(layer)
            materialize("decoder.lm_heads")
            heads = nn.ModuleDict({"lm_head": fuse_linears(list(model.decoder.lm_heads))})
            model.decoder.lm_heads = nn.ModuleList()
            convert_linears(heads, precision, heads=True)
            materialize("text_encoder")
            text_encoder = T5TextEncoder.from_transformers(model.text_encoder)
            text_width = int(model.text_encoder.config.hidden_size)
            model.text_encoder = nn.Identity()
            if precision in QUANTIZED:
                # A quarter of the memory; int8 products through the kernel also need no packing at
                # load (torch's dynamic int8 Linear repacked its weights at every start: ~1 s).
                quantize_linears(text_encoder)
            projection: nn.Module | None = None
            if text_width != config.hidden_size and model.config.decoder.cross_attention_hidden_size is None:
                materialize("enc_to_dec_proj")
                projection = model.enc_to_dec_proj
            materialize("audio_encoder.quantizer")
            materialize("audio_encoder.decoder")
            audio_decoder = EncodecAudioDecoder.from_transformers(model.audio_encoder)
            model.audio_encoder = nn.Identity()
        return cls(
            config,
            embed=embed,
            positions=positions,
            layers=layers,
            final_norm=final_norm,
            lm_head=heads["lm_head"],
            text_encoder=text_encoder,
            text_projection=projection,
            audio_decoder=audio_decoder,
            native=native,
        )

    def prepare_to_serve(self) -> None:
        """Fit the engine to the CPU it serves on: its threads, the step's weights gathered in read
        order, and EnCodec in bfloat16 where the CPU has bf16 dot products (not for fp32, which
        stays exact). Also keeps freed memory in the process for EnCodec's next layers
        (``handler.allocator``). Not undone: a model prepared to serve is never saved."""
        torch.set_num_threads(cpu_quota_threads())
        keep_freed_memory()
        if self.precision in QUANTIZED:
            self.gather_step_weights()
        natively = torch.bfloat16 if cpu_has_bf16() else torch.float32
        if self.precision != "fp32":
            self.audio_decoder.prepare_to_serve(natively)
            self.run_encodec_natively()
        if self.native:
            # Unpacked once (~100 MB for musicgen-small in bfloat16, 200 MB in float32): a request
            # folds them into its text. bfloat16 only where the CPU has it: elsewhere torch emulates
            # its products, and the fold took 0.87 s a request instead of 0.02 s held to AVX2.
            # Contiguous: the output weights are a transposed view, and torch's bfloat16 product
            # of a transposed operand is slow (a Zen 4's fold of 14 tokens 73 ms, contiguous 29).
            self._cross_projections = [
                (query.to(natively).contiguous(), output.to(natively).contiguous())
                for query, output in self._unpacked_cross_projections()
            ]

    @property
    def kernel_build(self) -> str | None:
        """The native kernels' build that runs the decode step (``NATIVE_KERNELS``), None where torch does."""
        kernels = runtime.best() if self.native else None
        return None if kernels is None else kernels.variant.name

    def run_encodec_natively(self) -> None:
        """EnCodec's LSTM recurrence in the native kernel, where one is built, its ELUs where the
        build is a tuned one (the plain-C reference's is slower than torch's), and its float32
        upsampling convolutions in 16-bit integers where the build has its own kernel for them."""
        kernels = runtime.best()
        if kernels is None:
            return
        for module in self.audio_decoder.modules():
            if isinstance(module, SkipLSTM) and NativeLSTM.supports(module.lstm):
                module.recurrence = NativeLSTM(module.lstm, kernels)
        decoder = self.audio_decoder
        if decoder.compute_dtype == torch.float32 and NativeConvolution.serves_on(kernels):
            decoder.run_convolutions_with(partial(NativeConvolution.where_faster, kernels=kernels))
        if kernels.variant != PLAIN:
            self.audio_decoder.run_elus_with(lambda alpha, inplace, dtype: NativeELU(alpha, kernels, inplace, dtype))

    def parts(self) -> dict[str, nn.Module | None]:
        """The model's modules by name (what an artifact describes)."""
        return {
            "layers": self.layers,
            "final_norm": self.final_ln,
            "lm_head": self.lm_head,
            "text_encoder": self.text_encoder,
            "text_projection": self.enc_to_dec_proj,
            "audio_decoder": self.audio_decoder,
        }

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the model holds as a parameter, buffer or table."""
        yield self.embed
        yield self.positions
        for part in self.parts().values():
            if part is not None:
                yield from part.parameters()
                yield from part.buffers()

    def gather_step_weights(self) -> None:
        """Move what every decode step streams into one block of anonymous memory, in read order."""
        packing.gather(self._step_linears())

    def step_bytes(self, position: int, rows: int, folded_text_length: int | None = None) -> int:
        """Bytes a native step at `position` reads from memory: what bounds its speed on a CPU.
        `folded_text_length`: the prompt's length in tokens when its cross-attention is folded."""
        linears = self._step_linears()
        folded = 0
        if folded_text_length is not None:
            projections = {id(lin) for lin in self._cross_projection_linears()}
            linears = [lin for lin in linears if id(lin) not in projections]
            folded = self._folded_cross_bytes(folded_text_length)
        return folded + packing.step_bytes(linears, len(self._layers), rows, self.num_heads, self.head_dim, position)

    def folds_cross_attention(self, prompts: int, text_length: int, steps: int) -> bool:
        """Whether a request's cross-attention is folded (`FoldedCrossAttention`): for one prompt
        (its takes all read the same text), when its folded keys and values are fewer bytes than
        the query and output weights, by enough over the clip's `steps` to pay for folding them."""
        if not self.native or prompts != 1:
            return False
        projections = self._cross_projection_linears()
        if any(lin.bias is not None for lin in projections):
            return False
        weights = packing.streamed_bytes(projections)
        folded = self._folded_cross_bytes(text_length)
        multiply_adds = folded * self.head_dim
        return (weights - folded) * steps >= FOLD_BYTES_PER_MULTIPLY_ADD * multiply_adds

    def _cross_projection_linears(self) -> list[Int8Linear | Int4Linear]:
        return [lin for layer in self._layers for lin in (layer.xq, layer.xo)]  # type: ignore[misc]

    def _folded_cross_bytes(self, text_length: int) -> int:
        """A folded prompt's keys and values: per layer, a vector of the decoder's width per head
        and token of each, the values' text in whole groups (`packing.value_text`)."""
        text = text_length + packing.value_text(text_length)
        return len(self._layers) * self.num_heads * text * self.hidden

    def _unpacked_cross_projections(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the cross-attention's query and output weights as (heads, head_dim, hidden)."""
        shape = (self.num_heads, self.head_dim, self.hidden)
        linears = self._cross_projection_linears()
        return [
            (query.dequantized_weight().reshape(shape), output.dequantized_weight().t().reshape(shape))
            for query, output in zip(linears[0::2], linears[1::2], strict=True)
        ]

    def _fold_cross_attention(self, cross: _CrossKV) -> list[FoldedCrossAttention]:
        projections = self._cross_projections or self._unpacked_cross_projections()
        native = runtime.best() if self.native else None
        fold = native.fold_cross_attention if native else FoldedCrossAttention.fold
        return [
            fold(keys[0], values[0], query, output)
            for keys, values, (query, output) in zip(cross.k, cross.v, projections, strict=True)
        ]

    def _step_linears(self) -> list[Int8Linear | Int4Linear]:
        linears = [lin for layer in self._layers for lin in layer.native_weights().linears()]
        return [lin for lin in (*linears, self.lm_head) if isinstance(lin, Int8Linear | Int4Linear)]

    # ------------------------------------------------------------------ encoder side
    def _encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs = self.text_encoder(input_ids, attention_mask)
        if self.enc_to_dec_proj is not None:
            hs = self.enc_to_dec_proj(hs)
        hs = hs * attention_mask[..., None]
        return hs, attention_mask

    def _cross_kv(self, hs: torch.Tensor, attention_mask: torch.Tensor) -> _CrossKV:
        b, s, _ = hs.shape
        x = hs.to(self.dtype)
        # The kernel's product, not the torch one: that unpacks every layer's weights to float
        # (~0.1-0.5 s a request for musicgen-small).
        native = runtime.best() if self.native else None
        ks: list[torch.Tensor] = []
        vs: list[torch.Tensor] = []
        for layer in self._layers:
            kv = native.linear(layer.xkv, x.reshape(b * s, -1)) if native else layer.xkv(x)  # type: ignore[arg-type]
            kv = kv.view(b, s, 2, self.num_heads, self.head_dim)
            ks.append(kv[:, :, 0].transpose(1, 2).contiguous())
            vs.append(kv[:, :, 1].transpose(1, 2).contiguous())
        mask: torch.Tensor | None = None
        if not bool(attention_mask.bool().all()):
            mask = attention_mask.bool().view(b, 1, 1, s)
        return _CrossKV(ks, vs, mask)

    # ------------------------------------------------------------------ decoding
    def _new_state(
        self,
        hs: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: int,
        total_len: int,
        steps: int | None = None,
        takes: int = 1,
    ) -> _State:
        """Caches for `rows` rows of up to `total_len` positions; `steps`: the decode steps they
        will serve in all (default one window's, `total_len` - 1), which decide whether folding
        the cross-attention pays; `takes`: how many times `hs` repeats its prompts."""
        cross = self._cross_kv(hs, attention_mask)
        cond_rows = int(hs.shape[0])
        steps = total_len - 1 if steps is None else steps
        native = self._native_run(cross, rows, cond_rows, cond_rows // takes, total_len, steps)
        n_layers = len(self.layers)
        shape = (n_layers, rows, self.num_heads, total_len, self.head_dim) if native is None else (0,)
        return _State(
            cross=cross,
            # Uninitialised: attention only reads positions already written, and untouched pages
            # of a long clip's cache cost no memory until they are.
            k_cache=torch.empty(shape, dtype=self.dtype),
            v_cache=torch.empty(shape, dtype=self.dtype),
            cross_out=torch.zeros((rows, 1, self.hidden), dtype=self.dtype),
            rows=rows,
            cond_rows=cond_rows,
            native=native,
        )

    def _native_run(
        self, cross: _CrossKV, rows: int, cond_rows: int, prompts: int, total_len: int, steps: int
    ) -> NativeRun | None:
        native = runtime.best() if self.native and rows <= packing.MAX_ROWS else None
        if native is None:
            return None
        folds = self.folds_cross_attention(prompts, int(cross.k[0].shape[2]), steps)
        folded = self._fold_cross_attention(cross) if folds else None
        return NativeRun(
            native,
            [layer.native_weights() for layer in self._layers],
            self.final_ln,  # type: ignore[arg-type]
            self.lm_head,  # type: ignore[arg-type]
            heads=self.num_heads,
            rows=rows,
            cond_rows=cond_rows,
            capacity=total_len,
            cross_k=cross.k,
            cross_v=cross.v,
            cross_mask=None if cross.mask is None else cross.mask.view(cond_rows, -1),
            folded_cross=folded,
        )

    def _step(self, st: _State, tok: torch.Tensor, t: int) -> torch.Tensor:
        """One decoder step for tokens ``tok`` (rows, K) at position ``t`` -> (rows, K, V) fp32."""
        x = F.embedding(tok + self.embed_offsets, self.embed).sum(dim=1, keepdim=True)
        x = x + self.positions[t]
        if st.native is not None:
            return self._native_step(st.native, x, t)
        return self._torch_step(st, x, t)

    def _native_step(self, run: NativeRun, x: torch.Tensor, t: int) -> torch.Tensor:
        out = run.step(x.view(run.rows, self.hidden), t)
        logits = out[:, : self.num_codebooks * self.vocab_size].clone()  # `out` is reused next step
        return logits.view(run.rows, self.num_codebooks, self.vocab_size)

    def _torch_step(self, st: _State, x: torch.Tensor, t: int) -> torch.Tensor:
        rows, bsz = st.rows, st.cond_rows
        d, h, hd = self.hidden, self.num_heads, self.head_dim
        k_cache, v_cache, cross, cross_out = st.k_cache, st.v_cache, st.cross, st.cross_out
        for li, layer in enumerate(self._layers):
            # self attention with static KV cache
            qkv = layer.qkv(layer.ln1(x)).view(rows, 3, h, hd)
            q = qkv[:, 0].unsqueeze(2)  # (rows, H, 1, hd)
            k_cache[li, :, :, t] = qkv[:, 1]
            v_cache[li, :, :, t] = qkv[:, 2]
            a = F.scaled_dot_product_attention(q, k_cache[li, :, :, : t + 1], v_cache[li, :, :, : t + 1])
            x = x + layer.o(a.reshape(rows, 1, d))
            # cross attention (cond rows only; uncond rows contribute exactly zero)
            xq = layer.xq(layer.ln2(x))
            qc = xq[:bsz].view(bsz, 1, h, hd).transpose(1, 2)
            ac = F.scaled_dot_product_attention(qc, cross.k[li], cross.v[li], attn_mask=cross.mask)
            cross_out[:bsz] = ac.reshape(bsz, 1, d)
            x = x + layer.xo(cross_out)
            # feed forward
            x = x + layer.fc2(layer.act(layer.fc1(layer.ln3(x))))
        logits: torch.Tensor = self.lm_head(self.final_ln(x))
        return logits.view(rows, self.num_codebooks, self.vocab_size).float()

    @torch.inference_mode()
    def teacher_forced_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        seq: torch.Tensor,
        *,
        guidance_scale: float,
    ) -> torch.Tensor:
        """CFG-combined next-token logits (T, batch, K, V) along a given delayed token sequence.

        ``seq`` is (batch, K, L) in the delay-pattern layout (position 0 = start token); position
        ``t``'s logits predict ``seq[:, :, t + 1]``.  Used by the benchmark's quality measurement.
        """
        bsz, _, total_len = seq.shape
        cfg = guidance_scale > 1.0
        rows = 2 * bsz if cfg else bsz
        hs, am = self._encode_text(input_ids, attention_mask)
        state = self._new_state(hs, am, rows, total_len)
        out: list[torch.Tensor] = []
        for t in range(total_len - 1):
            tok = seq[:, :, t].repeat(2, 1) if cfg else seq[:, :, t]
            logits = self._step(state, tok, t)
            if cfg:
                cond, uncond = logits[:bsz], logits[bsz:]
                logits = uncond + (cond - uncond) * guidance_scale
            out.append(logits)
        return torch.stack(out)

    @property
    def window_shape(self) -> WindowShape:
        """The windows clips longer than one are made in (``handler.musicgen.windows``)."""
        return WindowShape.for_model(self.frame_rate, self.max_positions, self.num_codebooks)

    @torch.inference_mode()
    def generate_codes(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        steps: int,
        guidance_scale: float,
        temperature: float,
        top_k: int,
        seed: int,
        takes: int = 1,
        on_step: StepCallback = None,
    ) -> torch.Tensor:
        """Run ``steps`` decode steps (== transformers' ``max_new_tokens``) in one window.

        Returns codes of shape ``(1, takes * batch, num_codebooks, steps + 1 - num_codebooks)``
        ready for ``model.audio_encoder.decode(codes, [None] * batch)``: take after take, each
        with every prompt of the batch.
        """
        kcb = self.num_codebooks
        if steps < kcb:
            raise ValueError(f"steps must be >= {kcb}")
        if steps + 1 > self.max_positions:
            raise ValueError(f"steps + 1 must be <= {self.max_positions}")
        window = Window(start=0, frames=steps + 1 - kcb, prompt=0)
        return self._generate(
            input_ids, attention_mask, [window], guidance_scale, temperature, top_k, seed, takes, on_step
        )  # fmt: skip

    @torch.inference_mode()
    def generate_clip(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        frames: int,
        guidance_scale: float,
        temperature: float,
        top_k: int,
        seed: int,
        takes: int = 1,
        on_step: StepCallback = None,
    ) -> torch.Tensor:
        """Codes ``(1, takes * batch, num_codebooks, frames)`` of a clip of any length: one window
        (the same codes as ``generate_codes``) up to `window_shape`'s length, else window after
        window, each continuing the previous one's overlap. ``on_step`` counts the decode steps of
        every window."""
        windows = self.window_shape.plan(frames)
        return self._generate(
            input_ids, attention_mask, windows, guidance_scale, temperature, top_k, seed, takes, on_step
        )  # fmt: skip

    def _generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        windows: list[Window],
        guidance_scale: float,
        temperature: float,
        top_k: int,
        seed: int,
        takes: int,
        on_step: StepCallback,
    ) -> torch.Tensor:
        if takes < 1:
            raise ValueError("takes must be >= 1")
        kcb = self.num_codebooks
        hs, am = self._encode_text(input_ids, attention_mask)
        # Every take of a prompt reads the same text: its rows repeat the prompts, take after take.
        hs, am = hs.repeat(takes, 1, 1), am.repeat(takes, 1)
        bsz = int(hs.shape[0])
        cfg = guidance_scale > 1.0
        top_k = min(int(top_k), self.vocab_size) if top_k > 0 else self.vocab_size
        sampling = _Sampling.seeded(float(guidance_scale) if cfg else None, temperature, top_k, int(seed), takes)
        total_steps = sum(window.decode_steps(kcb) for window in windows)
        # One set of caches for every window: each window's prompt overwrites them from position 0.
        capacity = max(window.frames for window in windows) + kcb
        state = self._new_state(hs, am, 2 * bsz if cfg else bsz, capacity, total_steps, takes)
        codes = torch.empty((bsz, kcb, windows[-1].end), dtype=torch.long)
        done = 0
        for window in windows:

            def report(window_done: int, _: int, before: int = done) -> None:
                assert on_step is not None
                on_step(before + window_done, total_steps)

            prompt = codes[:, :, window.start : window.start + window.prompt]
            made = self._decode_window(state, sampling, window.frames, prompt, report if on_step else None)
            codes[:, :, window.start + window.prompt : window.end] = made[:, :, window.prompt :]
            done += window.decode_steps(kcb)
        return codes.unsqueeze(0)

    def _decode_window(
        self, state: _State, sampling: _Sampling, frames: int, prompt: torch.Tensor, on_step: StepCallback
    ) -> torch.Tensor:
        """One window of `frames` frames (batch, K, frames) whose first frames are `prompt` (batch,
        K, prompt frames), kept as given: its positions are prefilled, then decoding starts."""
        _, kcb, given = (int(size) for size in prompt.shape)
        total_len = frames + kcb
        seq = sequence_from_codes(prompt, total_len, self.start_token_id, self.pad_token_id)
        known = given_positions(kcb, given, total_len)
        forced = delay_forced(kcb, total_len)
        if given:
            # Steps 0 .. given - 1 read only the prompt and predict only positions it gives.
            self._prefill(state, seq[:, :, :given])
        if state.native is not None:
            self._decode_natively(state.native, seq, forced, known, given, sampling, on_step)
        else:
            self._decode_in_torch(state, seq, forced, known, given, sampling, on_step)
        return codes_from_sequence(seq)[0]

    def _prefill(self, st: _State, tokens: torch.Tensor) -> None:
        """Fill every layer's self-attention cache at positions 0 .. P - 1 from `tokens` (batch,
        K, P) in one pass of matrix products over all P positions, rather than P decode steps
        that each read every weight. The logits of these positions predict tokens the prompt
        already gives, so none are made."""
        length = int(tokens.shape[-1])
        rows, cond, d, h, hd = st.rows, st.cond_rows, self.hidden, self.num_heads, self.head_dim
        if rows > cond:  # guidance: the unconditional rows read the same tokens
            tokens = tokens.repeat(2, 1, 1)
        x = self.positions[:length].expand(rows, length, d).clone()
        for codebook in range(self.num_codebooks):
            x += F.embedding(tokens[:, codebook] + self.embed_offsets[0, codebook], self.embed)

        def product(lin: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            # The packed layers' torch products: the kernel's arithmetic, in matrix products
            # made for many rows (see `Int8Linear.forward`).
            out: torch.Tensor = lin(inputs.reshape(-1, inputs.shape[-1]))
            return out.to(inputs.dtype).view(*inputs.shape[:-1], -1)

        for li, layer in enumerate(self._layers):
            qkv = product(layer.qkv, layer.ln1(x)).view(rows, length, 3, h, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (rows, H, P, hd)
            if st.native is not None:
                st.native.write_positions(li, k, v)
            else:
                st.k_cache[li, :, :, :length] = k
                st.v_cache[li, :, :, :length] = v
            if li == len(self._layers) - 1:
                break  # the last layer's output feeds only the logits
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + product(layer.o, a.transpose(1, 2).reshape(rows, length, d))
            # cross attention (cond rows only; uncond rows contribute exactly zero before `xo`)
            qc = product(layer.xq, layer.ln2(x[:cond])).view(cond, length, h, hd).transpose(1, 2)
            ac = F.scaled_dot_product_attention(qc, st.cross.k[li], st.cross.v[li], attn_mask=st.cross.mask)
            cross_out = torch.zeros((rows, length, d), dtype=x.dtype)
            cross_out[:cond] = ac.transpose(1, 2).reshape(cond, length, d)
            x = x + product(layer.xo, cross_out)
            x = x + product(layer.fc2, layer.act(product(layer.fc1, layer.ln3(x))))

    def _decode_natively(
        self,
        run: NativeRun,
        seq: torch.Tensor,
        forced: torch.Tensor,
        known: torch.Tensor,
        first: int,
        sampling: _Sampling,
        on_step: StepCallback,
    ) -> None:
        """Steps `first` onwards, sampling and the delay pattern in native code, a batch of steps
        per call; `known` positions of `seq` (a prompt's) are kept as they are."""
        bsz, kcb, total_len = seq.shape
        steps = total_len - 1
        uniforms = torch.zeros((steps, bsz, kcb))
        uniforms[first:] = sampling.uniforms(steps - first, bsz // len(sampling.generators), kcb)
        generation = NativeGeneration(
            self.embed, self.positions, seq, forced, self.pad_token_id,
            guidance=1.0 if sampling.guidance is None else sampling.guidance,
            temperature=sampling.temperature, top_k=sampling.top_k,
            uniforms=uniforms,
        )  # fmt: skip
        given = seq.clone()
        # The kernel writes every codebook at each step; up to this step some still fall in the
        # prompt, so those steps run one at a time and the prompt's tokens are put back.
        one_by_one = int(known.nonzero()[:, 1].max()) if bool(known.any()) else 0
        t = first
        while t < steps:
            last = t + 1 if t < one_by_one else min(steps, t + NATIVE_STEPS_PER_CALL)
            run.kernels.generate(run, generation, t, last)
            if t < one_by_one:
                seq[:, :, t + 1] = torch.where(known[:, t + 1], given[:, :, t + 1], seq[:, :, t + 1])
            t = last
            if on_step is not None:
                on_step(t - first, steps - first)

    def _decode_in_torch(
        self,
        state: _State,
        seq: torch.Tensor,
        forced: torch.Tensor,
        known: torch.Tensor,
        first: int,
        sampling: _Sampling,
        on_step: StepCallback,
    ) -> None:
        bsz, kcb, total_len = seq.shape
        steps = total_len - 1
        pad_col = torch.full((bsz, kcb), self.pad_token_id, dtype=torch.long)
        for t in range(first, steps):
            tok = seq[:, :, t]
            if sampling.guidance is not None:
                tok = tok.repeat(2, 1)
            logits = self._step(state, tok, t)
            if sampling.guidance is not None:
                cond, uncond = logits[:bsz], logits[bsz:]
                scores = uncond + (cond - uncond) * sampling.guidance
            else:
                scores = logits
            if sampling.temperature <= 0.0:
                nxt = scores.argmax(dim=-1)
            else:
                # Scaling by a positive temperature keeps the order, so only the top-k are scaled.
                vals, idx = torch.topk(scores, sampling.top_k, dim=-1)
                vals = vals / sampling.temperature
                probs = torch.softmax(vals, dim=-1).view(bsz * kcb, sampling.top_k)
                pick = sampling.draw(probs)
                nxt = idx.view(bsz * kcb, sampling.top_k).gather(1, pick).view(bsz, kcb)
            nxt = torch.where(forced[:, t + 1], pad_col, nxt)
            seq[:, :, t + 1] = torch.where(known[:, t + 1], seq[:, :, t + 1], nxt)
            if on_step is not None:
                on_step(t + 1 - first, steps - first)

    @torch.inference_mode()
    def decode_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """EnCodec decode of ``generate_codes`` output -> (batch, 1, samples) float32.

        fp32 decodes a clip of up to one window whole, exactly as transformers does. Longer clips
        and the other precisions decode the convolutional upsampler in chunks of frames: the same
        audio up to float rounding, in a fraction of the memory (flat whatever the clip's length),
        and faster, since each chunk's activations stay in the CPU caches (and in bfloat16 once
        ``prepare_to_serve`` finds bf16 instructions).
        """
        decoder = self.audio_decoder
        if self.precision == "fp32" and int(codes.shape[-1]) <= self.window_shape.frames:
            return decoder.decode(codes)
        # Up to the LSTM the decoder runs at the frame rate and is cheap; after it, every layer
        # is a convolution, so a chunk with enough neighbouring frames decodes exactly.
        hidden = decoder.frames(codes)
        frames, hop, context = int(hidden.shape[-1]), decoder.hop_length, decoder.context_frames
        audio = torch.empty((int(hidden.shape[0]), 1, frames * hop))
        for start in range(0, frames, DECODE_CHUNK_FRAMES):
            end = min(frames, start + DECODE_CHUNK_FRAMES)
            lo, hi = max(0, start - context), min(frames, end + context)
            # One take at a time: a batch's activations outgrew glibc's 32 MB mapping threshold
            # (~170k page faults for 4 takes of 10 s), and torch's batched products copied the
            # weights for each take.
            for take in range(int(hidden.shape[0])):
                piece = decoder.upsample(hidden[take : take + 1, :, lo:hi])
                audio[take, :, start * hop : end * hop] = piece[0, :, (start - lo) * hop : (end - lo) * hop]
        return audio
