"""Lean CPU decode loop for MusicGen (musicgen-small and same-structure models).

``FastMusicgen`` takes a ``MusicgenForConditionalGeneration`` and runs its own autoregressive loop
over the model's modules instead of ``model.generate``:

* the text encoder runs once; the cross-attention K/V of every decoder layer are computed once;
* the self-attention KV cache is a preallocated static tensor for the whole clip;
* q/k/v projections are fused into one Linear, the cross-attention k/v into one Linear and the
  four codebook heads into one Linear (fewer, larger GEMMs and fewer Python calls);
* classifier-free guidance runs as one batch (cond rows, then uncond rows), exactly as
  transformers does it: the unconditional rows see a zeroed encoder hidden state with an all-zero
  attention mask, so their cross-attention output is exactly zero;
* the codebook delay pattern is the one of ``MusicgenForCausalLM.build_delay_pattern_mask``;
* sampling is CFG -> temperature -> top-k -> softmax -> multinomial with a ``torch.Generator``
  seeded from an integer (same seed => identical codes); ``temperature == 0`` is greedy argmax;
* precision ``"int8"`` (default) stores the decoder's Linear layers as int8 with per-output-channel
  scales and runs each step in the native kernel of ``handler.native`` (one call for all layers,
  int8 KV cache; the same products in torch, with a float cache, where the library is not built);
  the text encoder's Linear layers get torch's dynamic int8 quantization. ``"int4"`` is the same
  with the decoder layers' weights in int4, one scale per 64 inputs (the codebook heads stay
  int8): half the bytes each step streams, further from fp32. ``"bf16"`` casts the decoder to
  bfloat16, ``"fp32"`` keeps it exact (greedy codes match ``model.generate`` bit for bit);
* the text encoder (``handler.musicgen.text_encoder``) and EnCodec's decoder (``handler.musicgen.audio_decoder``) are
  rebuilt from plain torch modules with the same arithmetic, so an engine holds no transformers
  objects and a saved one loads without importing transformers (seconds of every cold start).

The decoder is converted in place: after construction ``model.generate`` no longer works on the
same model object (its decoder layers are consumed to avoid holding two copies of the weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from handler.allocator import keep_freed_memory
from handler.cpu import cpu_has_bf16, cpu_quota_threads
from handler.musicgen.audio_decoder import EncodecAudioDecoder
from handler.musicgen.text_encoder import T5TextEncoder, shared_linear
from handler.native import packing, runtime
from handler.native.packing import FoldedCrossAttention, Int4Linear, Int8Linear, LayerWeights
from handler.native.runtime import NativeGeneration, NativeRun
from handler.settings import QUANTIZED, Precision

NATIVE_STEPS_PER_CALL = 10
"""Decode steps per call into native code: progress is reported (and Python runs) between calls."""
DECODE_CHUNK_FRAMES = 100
"""EnCodec frames decoded at a time after the LSTM (2 s of audio at 50 frames/s)."""
DECODE_CONTEXT_FRAMES = 8
"""Frames of context on each side of a chunk: more than the upsampler's receptive field (about
4 frames for the 32 kHz EnCodec), so chunked audio equals whole-clip audio up to float rounding."""


def _fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    """Concatenate Linear layers sharing an input along the output dim (frees nothing itself)."""
    w = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    has_bias = all(lin.bias is not None for lin in linears)
    fused = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=False)
    if has_bias:
        b = torch.cat([lin.bias.detach() for lin in linears if lin.bias is not None], dim=0)
        fused.bias = nn.Parameter(b, requires_grad=False)
    return fused


class _Layer(nn.Module):
    """Weights of one decoder layer, rearranged for decoding."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        sa, ca = layer.self_attn, layer.encoder_attn
        self.ln1: nn.Module = layer.self_attn_layer_norm
        # Linear now, Int8Linear after int8 conversion
        self.qkv: nn.Module = _fuse_linears([sa.q_proj, sa.k_proj, sa.v_proj])
        self.o: nn.Module = shared_linear(sa.out_proj)
        self.ln2: nn.Module = layer.encoder_attn_layer_norm
        self.xq: nn.Module = shared_linear(ca.q_proj)
        self.xkv: nn.Module = _fuse_linears([ca.k_proj, ca.v_proj])
        self.xo: nn.Module = shared_linear(ca.out_proj)
        self.ln3: nn.Module = layer.final_layer_norm
        self.fc1: nn.Module = shared_linear(layer.fc1)
        self.fc2: nn.Module = shared_linear(layer.fc2)
        # torch's own GELU where it is one: the engine then holds no transformers objects.
        gelu = type(layer.activation_fn).__name__ == "GELUActivation"
        self.act: nn.Module = nn.GELU() if gelu else layer.activation_fn

    def native_weights(self) -> LayerWeights:
        return LayerWeights(
            norms=(self.ln1, self.ln2, self.ln3),  # type: ignore[arg-type]
            qkv=self.qkv,  # type: ignore[arg-type]
            out=self.o,  # type: ignore[arg-type]
            cross_q=self.xq,  # type: ignore[arg-type]
            cross_out=self.xo,  # type: ignore[arg-type]
            fc1=self.fc1,  # type: ignore[arg-type]
            fc2=self.fc2,  # type: ignore[arg-type]
        )


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


def _quantize_int8(module: nn.Module) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
        module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
    return quantized


@dataclass(frozen=True)
class _Sampling:
    """How one generation picks its tokens."""

    guidance: float | None  # classifier-free guidance scale; None: no unconditional rows
    temperature: float  # <= 0: greedy
    top_k: int
    generator: torch.Generator


FOLD_BYTES_PER_MULTIPLY_ADD = 2
"""Fold a request's cross-attention when the bytes that saves its steps are at least this many per
multiply-add of folding: the 2-vCPU development machine streams ~30 GB/s and folds at ~16 G
multiply-adds a second (~50 ms for musicgen-small and a 16-token prompt)."""

StepCallback = Callable[[int, int], None] | None
"""Called with (steps done, steps in all) as decoding goes."""


class FastMusicgen:
    """Fast CPU decoding engine over a ``MusicgenForConditionalGeneration`` (see module docs)."""

    def __init__(self, model: Any, precision: Precision = "int8", native: bool = True) -> None:
        """Convert `model`, a transformers ``MusicgenForConditionalGeneration`` (consumed)."""
        if precision not in get_args(Precision):
            raise ValueError(f"unknown precision {precision!r}")
        torch.set_num_threads(cpu_quota_threads())
        model.eval()
        self.precision: Precision = precision
        dcfg: Any = model.config.decoder
        acfg: Any = model.config.audio_encoder
        if int(dcfg.audio_channels) != 1:
            raise NotImplementedError("only mono MusicGen checkpoints are supported")
        self.num_codebooks = int(dcfg.num_codebooks)
        self.vocab_size = int(dcfg.vocab_size)
        self.hidden = int(dcfg.hidden_size)
        self.num_heads = int(dcfg.num_attention_heads)
        self.head_dim = self.hidden // self.num_heads
        self.max_positions = int(dcfg.max_position_embeddings)
        gen_cfg: Any = model.generation_config
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else dcfg.pad_token_id
        start = gen_cfg.decoder_start_token_id
        self.pad_token_id = int(pad)
        self.start_token_id = int(start if start is not None else pad)
        self.top_k: int | None = gen_cfg.top_k
        self.sampling_rate = int(acfg.sampling_rate)
        self.frame_rate = int(acfg.frame_rate)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # The kernel implements exactly this layer: int8 or int4 weights, pre-norm, GELU (erf).
        self.native = (
            native
            and precision in QUANTIZED
            and dcfg.activation_function == "gelu"
            and runtime.head_dim_supported(self.head_dim)
        )

        dec: Any = model.decoder.model.decoder
        with torch.no_grad():
            emb = torch.cat([e.weight.detach() for e in dec.embed_tokens], dim=0)
            self.embed = emb.to(self.dtype)  # (K * (V+1), D)
            self.embed_offsets = (torch.arange(self.num_codebooks, dtype=torch.long) * (self.vocab_size + 1)).view(
                1, -1
            )
            self.positions = dec.embed_positions.weights.detach().to(self.dtype)
            self.final_ln: nn.Module = dec.layer_norm
            layers: list[_Layer] = []
            # convert layer by layer and drop the originals so peak memory stays ~1 copy
            for i in range(len(dec.layers)):
                fl = _Layer(dec.layers[i])
                dec.layers[i] = nn.Identity()  # release original modules (weights now in fl)
                self._convert(fl)
                layers.append(fl)
            self.layers = nn.ModuleList(layers)
            self._layers: list[_Layer] = layers
            heads: Any = model.decoder.lm_heads
            self.lm_head: nn.Module = _fuse_linears(list(heads))
            model.decoder.lm_heads = nn.ModuleList()
            holder = nn.ModuleDict({"h": self.lm_head})
            # The heads make the logits themselves: int8 even in int4 (2% of the step's weights).
            self._convert(holder, heads=True)
            self.lm_head = holder["h"]
            self.final_ln.to(self.dtype)
            self.text_encoder = T5TextEncoder.from_transformers(model.text_encoder)
            projects = model.text_encoder.config.hidden_size != self.hidden
            self.enc_to_dec_proj: nn.Module | None = (
                model.enc_to_dec_proj if projects and dcfg.cross_attention_hidden_size is None else None
            )
            self.audio_decoder = EncodecAudioDecoder.from_transformers(model.audio_encoder)
            if precision in QUANTIZED:
                # Runs once per request, so speed hardly matters; a quarter of the memory does.
                _quantize_int8(self.text_encoder)
                self.gather_step_weights()
        self._cross_projections: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def prepare_to_serve(self) -> None:
        """Fit the engine to the CPU it serves on: its threads, and EnCodec in bfloat16 where the
        CPU has bf16 dot products (not for fp32, which stays exact). Also keeps freed memory
        in the process for EnCodec's next layers (``handler.allocator``)."""
        torch.set_num_threads(cpu_quota_threads())
        keep_freed_memory()
        if self.precision != "fp32":
            self.audio_decoder.prepare_to_serve(torch.bfloat16 if cpu_has_bf16() else torch.float32)
        if self.native:
            # Unpacked once (bf16, ~100 MB for musicgen-small): a request folds them into its text.
            self._cross_projections = [(q.bfloat16(), o.bfloat16()) for q, o in self._unpacked_cross_projections()]

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

    def folds_cross_attention(self, cond_rows: int, text_length: int, steps: int) -> bool:
        """Whether a request's cross-attention is folded (`FoldedCrossAttention`): for one prompt,
        when its folded keys and values are fewer bytes than the query and output weights, by
        enough over the clip's `steps` to pay for folding them."""
        if not self.native or cond_rows != 1:
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
        """A folded prompt's keys and values: per layer, two vectors of the decoder's width per head and token."""
        return len(self._layers) * self.num_heads * text_length * 2 * self.hidden

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
        return [
            FoldedCrossAttention.fold(keys[0], values[0], query, output)
            for keys, values, (query, output) in zip(cross.k, cross.v, projections, strict=True)
        ]

    def _step_linears(self) -> list[Int8Linear | Int4Linear]:
        linears = [lin for layer in self._layers for lin in layer.native_weights().linears()]
        return [lin for lin in (*linears, self.lm_head) if isinstance(lin, Int8Linear | Int4Linear)]

    def _convert(self, module: nn.Module, heads: bool = False) -> None:
        if self.precision in QUANTIZED:
            packed = Int4Linear if self.precision == "int4" and not heads else Int8Linear
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, packed.from_linear(child))
        elif self.precision == "bf16":
            module.to(torch.bfloat16)

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
    def _delay_forced(self, total_len: int) -> torch.Tensor:
        """(K, L) bool: positions the delay pattern forces to the pad token (mono layout)."""
        k = self.num_codebooks
        ones = torch.ones((k, total_len), dtype=torch.bool)
        if total_len < 2 * k - 1:  # transformers returns the ids unchanged in this case
            return torch.zeros((k, total_len), dtype=torch.bool)
        return torch.triu(ones, diagonal=total_len - k + 1) | torch.tril(ones)

    def _new_state(self, hs: torch.Tensor, attention_mask: torch.Tensor, rows: int, total_len: int) -> _State:
        cross = self._cross_kv(hs, attention_mask)
        cond_rows = int(hs.shape[0])
        native = self._native_run(cross, rows, cond_rows, total_len)
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

    def _native_run(self, cross: _CrossKV, rows: int, cond_rows: int, total_len: int) -> NativeRun | None:
        native = runtime.best() if self.native and rows <= packing.MAX_ROWS else None
        if native is None:
            return None
        folds = self.folds_cross_attention(cond_rows, int(cross.k[0].shape[2]), total_len - 1)
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
        on_step: StepCallback = None,
    ) -> torch.Tensor:
        """Run ``steps`` decode steps (== transformers' ``max_new_tokens``).

        Returns codes of shape ``(1, batch, num_codebooks, steps + 1 - num_codebooks)`` ready for
        ``model.audio_encoder.decode(codes, [None] * batch)``.
        """
        kcb = self.num_codebooks
        total_len = steps + 1
        if steps < kcb:
            raise ValueError(f"steps must be >= {kcb}")
        if total_len > self.max_positions:
            raise ValueError(f"steps + 1 must be <= {self.max_positions}")
        bsz = int(input_ids.shape[0])
        cfg = guidance_scale > 1.0
        rows = 2 * bsz if cfg else bsz
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))

        hs, am = self._encode_text(input_ids, attention_mask)
        state = self._new_state(hs, am, rows, total_len)
        forced = self._delay_forced(total_len)
        seq = torch.full((bsz, kcb, total_len), self.pad_token_id, dtype=torch.long)
        seq[:, :, 0] = self.start_token_id
        top_k = min(int(top_k), self.vocab_size) if top_k > 0 else self.vocab_size
        sampling = _Sampling(float(guidance_scale) if cfg else None, temperature, top_k, gen)
        if state.native is not None:
            self._decode_natively(state.native, seq, forced, sampling, on_step)
        else:
            self._decode_in_torch(state, seq, forced, sampling, on_step)
        n_frames = total_len - kcb
        codes = torch.stack([seq[:, k, k + 1 : k + 1 + n_frames] for k in range(kcb)], dim=1)
        return codes.unsqueeze(0)

    def _decode_natively(
        self, run: NativeRun, seq: torch.Tensor, forced: torch.Tensor, sampling: _Sampling, on_step: StepCallback
    ) -> None:
        """Steps, sampling and the delay pattern in native code, a batch of steps per call."""
        bsz, kcb, total_len = seq.shape
        steps = total_len - 1
        uniforms = torch.rand((steps, bsz, kcb), generator=sampling.generator)
        generation = NativeGeneration(
            self.embed, self.positions, seq, forced, self.pad_token_id,
            guidance=1.0 if sampling.guidance is None else sampling.guidance,
            temperature=sampling.temperature, top_k=sampling.top_k,
            uniforms=uniforms,
        )  # fmt: skip
        for first in range(0, steps, NATIVE_STEPS_PER_CALL):
            last = min(steps, first + NATIVE_STEPS_PER_CALL)
            run.kernels.generate(run, generation, first, last)
            if on_step is not None:
                on_step(last, steps)

    def _decode_in_torch(
        self, state: _State, seq: torch.Tensor, forced: torch.Tensor, sampling: _Sampling, on_step: StepCallback
    ) -> None:
        bsz, kcb, total_len = seq.shape
        steps = total_len - 1
        pad_col = torch.full((bsz, kcb), self.pad_token_id, dtype=torch.long)
        for t in range(steps):
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
                pick = torch.multinomial(probs, 1, generator=sampling.generator)
                nxt = idx.view(bsz * kcb, sampling.top_k).gather(1, pick).view(bsz, kcb)
            seq[:, :, t + 1] = torch.where(forced[:, t + 1], pad_col, nxt)
            if on_step is not None:
                on_step(t + 1, steps)

    @torch.inference_mode()
    def decode_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """EnCodec decode of ``generate_codes`` output -> (batch, 1, samples) float32.

        fp32 decodes the whole clip at once, exactly as transformers does. The other precisions
        decode the convolutional upsampler in chunks of frames: the same audio up to float
        rounding, in a fraction of the memory, and faster, since each chunk's activations stay in
        the CPU caches (and in bfloat16 once ``prepare_to_serve`` finds bf16 instructions).
        """
        decoder = self.audio_decoder
        if self.precision == "fp32":
            return decoder.decode(codes)
        # Up to the LSTM the decoder runs at the frame rate and is cheap; after it, every layer
        # is a convolution, so a chunk with enough neighbouring frames decodes exactly.
        hidden = decoder.frames(codes)
        frames, hop = int(hidden.shape[-1]), decoder.hop_length
        pieces = []
        for start in range(0, frames, DECODE_CHUNK_FRAMES):
            end = min(frames, start + DECODE_CHUNK_FRAMES)
            lo, hi = max(0, start - DECODE_CONTEXT_FRAMES), min(frames, end + DECODE_CONTEXT_FRAMES)
            piece = decoder.upsample(hidden[..., lo:hi])
            pieces.append(piece[..., (start - lo) * hop : (end - lo) * hop])
        return torch.cat(pieces, dim=-1)


def artifact_name(precision: Precision) -> str:
    """The serving artifact beside a saved model: the whole engine, its decoder already in `precision`."""
    return f"fast-musicgen-{precision}.pt"


def save_artifact(engine: FastMusicgen, path: Path) -> None:
    """Save a converted engine, so serving loads quantized weights instead of converting fp32 ones."""
    if engine.audio_decoder.prepared_to_serve:
        # An artifact is baked on one machine and served on others: EnCodec is fitted to the CPU there.
        raise ValueError("an engine prepared to serve (EnCodec no longer in float32) cannot be saved")
    torch.save(engine, path)


def load_artifact(path: Path) -> FastMusicgen:
    """Load an engine saved by `save_artifact`. Only for artifacts this project baked: it unpickles."""
    engine: FastMusicgen = torch.load(path, weights_only=False, mmap=True)
    engine.gather_step_weights()
    engine.prepare_to_serve()
    return engine
