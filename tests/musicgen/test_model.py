"""The lean decode loop against transformers' own `generate`, on the tiny model."""

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from handler.allocator import HUGE_PAGE
from handler.cpu import cpu_has_bf16
from handler.musicgen.audio_decoder import SkipLSTM
from handler.musicgen.model import DECODE_CHUNK_FRAMES, MusicgenModel
from handler.musicgen.pattern import delay_forced, given_positions, sequence_from_codes
from handler.musicgen.windows import Window
from handler.native import packing, runtime
from handler.native.build import PLAIN
from handler.native.convolution import NativeConvolution
from handler.native.elu import NativeELU
from handler.native.lstm import NativeLSTM
from handler.native.packing import Int4Linear, Int8Linear
from tests.support.native_builds import RUNNABLE

PROMPTS = ["80s pop track with bassy drums and synth", "lofi chill"]


def load(model_dir: Path) -> tuple[Any, Any]:
    model = MusicgenForConditionalGeneration.from_pretrained(model_dir)
    return model, AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]


def served_int8_engine(model_dir: Path, takes: int, seed: int) -> tuple[MusicgenModel, torch.Tensor, torch.Tensor]:
    """An `int8` engine prepared to serve, random codes for two chunks of EnCodec frames a take
    (their context frames overlap), and their audio as the engine decoded it before serving."""
    model, _ = load(model_dir)
    engine = MusicgenModel.from_transformers(model, precision="int8")
    shape = (1, takes, 4, DECODE_CHUNK_FRAMES + 30)
    codes = torch.randint(0, engine.vocab_size, shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        before = engine.decode_audio(codes)
    engine.prepare_to_serve()
    return engine, codes, before


def snr_db(reference: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (got - reference).pow(2).sum()))


@pytest.mark.parametrize("guidance", [3.0, 1.0])
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_fp32_greedy_audio_equals_transformers_generate(
    tiny_model_dir: Path, guidance: float, prompts: list[str]
) -> None:
    model, processor = load(tiny_model_dir)
    inputs = processor(text=prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=64)
    fast = MusicgenModel.from_transformers(load(tiny_model_dir)[0], precision="fp32")
    codes = fast.generate_codes(
        inputs["input_ids"],
        inputs["attention_mask"],
        steps=64,
        guidance_scale=guidance,
        temperature=0.0,
        top_k=250,
        seed=0,
    )
    assert torch.equal(fast.decode_audio(codes), expected)


@pytest.mark.parametrize("precision", ["int8", "int4", "fp32"])
def test_sampling_is_seeded(tiny_model_dir: Path, precision: Any) -> None:
    model, processor = load(tiny_model_dir)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    fast = MusicgenModel.from_transformers(model, precision=precision)
    options: dict[str, Any] = {"steps": 40, "guidance_scale": 3.0, "temperature": 1.0, "top_k": 250}
    first = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=7, **options)
    again = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=7, **options)
    other = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=8, **options)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (1, 1, 4, 40 + 1 - 4)


def test_int8_stores_every_decoder_linear_as_int8(tiny_model_dir: Path) -> None:
    fast = MusicgenModel.from_transformers(load(tiny_model_dir)[0], precision="int8")
    modules = [*fast.layers.modules(), fast.lm_head]
    assert [m for m in modules if isinstance(m, torch.nn.Linear)] == []
    assert len([m for m in modules if isinstance(m, Int8Linear)]) == 2 * 7 + 1  # qkv, o, xq, xkv, xo, fc1, fc2; heads


def test_int4_stores_the_decoder_layers_in_int4_and_the_heads_in_int8(tiny_model_dir: Path) -> None:
    fast = MusicgenModel.from_transformers(load(tiny_model_dir)[0], precision="int4")
    layers = list(fast.layers.modules())
    assert [m for m in (*layers, fast.lm_head) if isinstance(m, torch.nn.Linear)] == []
    assert len([m for m in layers if isinstance(m, Int4Linear)]) == 2 * 7
    assert [m for m in layers if isinstance(m, Int8Linear)] == []
    assert isinstance(fast.lm_head, Int8Linear)


def teacher_forced(model_dir: Path, prompts: list[str], guidance: float, **engine: Any) -> torch.Tensor:
    model, processor = load(model_dir)
    inputs = processor(text=prompts, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(3)
    vocab = model.config.decoder.vocab_size
    seq = torch.randint(0, vocab, (len(prompts), 4, 48), generator=generator)
    seq[:, :, 0] = vocab  # the start token
    fast = MusicgenModel.from_transformers(model, **engine)
    return fast.teacher_forced_logits(inputs["input_ids"], inputs["attention_mask"], seq, guidance_scale=guidance)


@pytest.mark.parametrize("precision", ["int8", "int4"])
# "lofi chill" is short enough for its cross-attention to be folded (see the next test)
@pytest.mark.parametrize(
    ("prompts", "guidance"), [(PROMPTS[:1], 1.0), (PROMPTS[:1], 3.0), (PROMPTS, 3.0), (PROMPTS[1:], 3.0)]
)
def test_native_step_equals_the_torch_step(
    tiny_model_dir: Path, prompts: list[str], guidance: float, precision: str
) -> None:
    assert runtime.best() is not None, "make builds the kernels before the tests"
    native = teacher_forced(tiny_model_dir, prompts, guidance, precision=precision)
    in_torch = teacher_forced(tiny_model_dir, prompts, guidance, precision=precision, native=False)
    exact = teacher_forced(tiny_model_dir, prompts, guidance, precision="fp32")
    scale = float(exact.abs().max())
    # The native step's only other approximation is its int8 KV cache; guidance amplifies it.
    torch.testing.assert_close(native, in_torch, rtol=0, atol=0.01 * guidance * scale)
    torch.testing.assert_close(native, exact, rtol=0, atol=0.05 * scale)
    assert not torch.equal(native, exact)


def test_int4_runs_its_own_weights(tiny_model_dir: Path) -> None:
    int8 = teacher_forced(tiny_model_dir, PROMPTS[:1], 3.0, precision="int8")
    int4 = teacher_forced(tiny_model_dir, PROMPTS[:1], 3.0, precision="int4")
    assert not torch.equal(int4, int8)


def test_engine_without_native_kernels_still_generates(tiny_model_dir: Path) -> None:
    model, processor = load(tiny_model_dir)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    fast = MusicgenModel.from_transformers(model, precision="int8", native=False)
    codes = fast.generate_codes(
        inputs["input_ids"], inputs["attention_mask"], steps=20, guidance_scale=3.0, temperature=1.0, top_k=50, seed=1
    )
    assert codes.shape == (1, 1, 4, 20 + 1 - 4)


@pytest.mark.parametrize("frames", [7, 100, 321])
def test_chunked_encodec_decoding_equals_whole_clip_decoding(tiny_model_dir: Path, frames: int) -> None:
    model, _ = load(tiny_model_dir)
    codes = torch.randint(
        0, model.config.decoder.vocab_size, (1, 1, 4, frames), generator=torch.Generator().manual_seed(5)
    )
    with torch.inference_mode():
        whole = model.audio_encoder.decode(codes, audio_scales=[None]).audio_values
    chunked = MusicgenModel.from_transformers(model, precision="int8").decode_audio(codes)
    assert chunked.shape == whole.shape == (1, 1, frames * 640)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize("precision", ["int8", "int4", "fp32"])
def test_serving_decodes_encodec_in_bf16_only_where_the_cpu_has_bf16(tiny_model_dir: Path, precision: Any) -> None:
    model, _ = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision)
    assert engine.audio_decoder.compute_dtype == torch.float32
    engine.prepare_to_serve()
    bf16 = precision != "fp32" and cpu_has_bf16()
    assert engine.audio_decoder.compute_dtype == (torch.bfloat16 if bf16 else torch.float32)


@pytest.mark.parametrize("isa_cap", [None, "AVX2"])
def test_the_folded_projections_are_bf16_only_where_torch_has_bf16_natively_and_contiguous(
    tiny_model_dir: Path, isa_cap: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # elsewhere torch emulates bfloat16 products: a request's fold took 0.87 s instead of 0.02 s;
    # and a transposed bfloat16 operand takes a slow path (a Zen 4's fold of 14 tokens 73 ms, 29 contiguous)
    if isa_cap is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    model, _ = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision="int8")
    engine.prepare_to_serve()
    native_bf16 = cpu_has_bf16() and isa_cap is None
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert engine._cross_projections
    assert {tensor.dtype for pair in engine._cross_projections for tensor in pair} == {expected}
    assert all(tensor.is_contiguous() for pair in engine._cross_projections for tensor in pair)
    assert engine.audio_decoder.compute_dtype == expected


@pytest.mark.parametrize("precision", ["int8", "int4", "fp32"])
def test_serving_runs_encodecs_lstm_natively_except_in_fp32(tiny_model_dir: Path, precision: Any) -> None:
    model, _ = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision)
    (lstm,) = [module for module in engine.audio_decoder.modules() if isinstance(module, SkipLSTM)]
    codes = torch.randint(0, model.config.decoder.vocab_size, (1, 1, 4, 60), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        before = engine.decode_audio(codes)
    engine.prepare_to_serve()
    assert isinstance(lstm.recurrence, NativeLSTM) == (precision != "fp32")
    with torch.inference_mode():
        after = engine.decode_audio(codes)
    # bf16 EnCodec where the CPU has it, and the int8 LSTM
    assert snr_db(before, after) > (30 if precision != "fp32" else 200)


@pytest.mark.parametrize("name", [variant.name for variant in RUNNABLE])
def test_serving_runs_encodecs_elus_natively_on_a_tuned_build(
    tiny_model_dir: Path, forced_kernels: Callable[[str], None], name: str
) -> None:
    forced_kernels(name)
    engine, codes, before = served_int8_engine(tiny_model_dir, takes=2, seed=3)
    decoder = engine.audio_decoder
    elus = [module for module in decoder.modules() if isinstance(module, nn.ELU | NativeELU)]
    tuned = name != PLAIN.name  # the plain build's ELU is slower than torch's
    assert elus
    assert all(isinstance(module, NativeELU) == tuned for module in elus)
    if tuned:
        # the output layers' ELU ends the upsampling, converting to their float32 in its own pass
        last = decoder.upsample_layers[-1]
        assert isinstance(last, NativeELU)
        assert last.dtype == torch.float32
        assert last.inplace  # on the last residual block's fresh output (a copy where the dtype changes)
        assert not any(isinstance(module, NativeELU) for module in decoder.output_layers)
    with torch.inference_mode():
        after = engine.decode_audio(codes)
    assert after.dtype == torch.float32
    assert snr_db(before, after) > 30


@pytest.mark.parametrize("name", [variant.name for variant in RUNNABLE])
def test_serving_float32_encodec_runs_its_wide_convolutions_natively_on_a_tuned_build(
    tiny_model_dir: Path, forced_kernels: Callable[[str], None], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    forced_kernels(name)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # as on a CPU without bf16: EnCodec in float32
    engine, codes, before = served_int8_engine(tiny_model_dir, takes=1, seed=4)
    decoder = engine.audio_decoder
    assert decoder.compute_dtype == torch.float32
    kernels = runtime.best()
    assert kernels is not None
    native = [m for m in decoder.modules() if getattr(m, "native", None) is not None]
    if NativeConvolution.serves_on(kernels):
        # the tiny codec's first upsampling reads 64 channels, its later layers fewer (torch's there)
        first = decoder.upsample_layers[1]
        assert native == [first]
        assert isinstance(decoder.upsample_layers[0], nn.Identity)  # its ELU, folded into it
        assert first.elu_alpha == 1.0
    else:
        assert native == []
    with torch.inference_mode():
        after = engine.decode_audio(codes)
    assert snr_db(before, after) > 30


def test_step_bytes_count_the_streamed_weights_and_the_cache_written_so_far(tiny_model_dir: Path) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision="int4")
    engine.prepare_to_serve()
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    hidden, mask = engine._encode_text(inputs["input_ids"], inputs["attention_mask"])
    capacity = 2 * packing.KEY_TILE
    run = engine._new_state(hidden, mask, rows=2, total_len=capacity).native
    assert run is not None
    caches = (run.k_cache, run.v_cache, run.k_scale, run.v_scale, run.k_sum)
    per_position = sum(cache.nbytes for cache in caches) // capacity
    # What a step streams was gathered into one block of memory per dtype, each starting on a 2 MB
    # page: every buffer starts where the one before it of its dtype ended.
    streamed = [getattr(lin, name) for lin in engine._step_linears() for name in lin.streamed]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in streamed:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    assert len(by_dtype) == 3  # int4 layer weights, their bf16 scales, int8 heads
    for block in by_dtype.values():
        assert block[0].data_ptr() % HUGE_PAGE == 0
        for before, after in itertools.pairwise(block):
            assert after.data_ptr() == before.data_ptr() + before.nbytes
    weights = sum(tensor.nbytes for tensor in streamed)
    assert engine.step_bytes(0, rows=2) == weights + per_position
    assert engine.step_bytes(capacity - 1, rows=2) == weights + capacity * per_position


@pytest.mark.parametrize("guidance", [3.0, 1.0])
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_the_native_loop_picks_each_greedy_token_as_the_argmax_of_its_step(
    tiny_model_dir: Path, guidance: float, prompts: list[str], precision: Any
) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision)
    inputs = processor(text=prompts, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    codes = engine.generate_codes(ids, mask, steps=40, guidance_scale=guidance, temperature=0.0, top_k=250, seed=0)
    frames = codes.shape[-1]
    sequence = torch.full((len(prompts), 4, frames + 4), engine.pad_token_id, dtype=torch.long)
    sequence[:, :, 0] = engine.start_token_id
    for k in range(4):
        sequence[:, k, k + 1 : k + 1 + frames] = codes[0, :, k]
    # The torch loop's steps (each a native step) along the sequence the native loop made.
    logits = engine.teacher_forced_logits(ids, mask, sequence, guidance_scale=guidance)
    free = ~delay_forced(engine.num_codebooks, sequence.shape[-1])[:, 1:]
    picked = sequence[:, :, 1:]
    argmax = logits.argmax(-1).permute(1, 2, 0)
    assert torch.equal(picked[:, free], argmax[:, free])


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_one_short_prompt_folds_its_cross_attention_into_the_text(tiny_model_dir: Path, precision: str) -> None:
    model, processor = load(tiny_model_dir)
    fast = MusicgenModel.from_transformers(model, precision=precision)  # type: ignore[arg-type]
    short, long = (processor(text=[prompt], return_tensors="pt") for prompt in (PROMPTS[1], PROMPTS[0]))
    text_length = int(short["input_ids"].shape[1])
    assert fast.folds_cross_attention(1, text_length, steps=47)
    assert not fast.folds_cross_attention(2, text_length, steps=47)
    assert not fast.folds_cross_attention(1, text_length, steps=3)  # too short a clip to pay for folding
    # the tiny model's projections are small: a long prompt's folded keys and values would be more bytes
    assert not fast.folds_cross_attention(1, int(long["input_ids"].shape[1]), steps=47)

    def folded_layers(inputs: Any, takes: int = 1) -> list[bool]:
        hs, mask = fast._encode_text(inputs["input_ids"], inputs["attention_mask"])
        hs, mask = hs.repeat(takes, 1, 1), mask.repeat(takes, 1)
        native = fast._new_state(hs, mask, rows=2 * takes, total_len=48, takes=takes).native
        assert native is not None
        return [native.struct.layer[i].cross_keys.n > 0 for i in range(len(fast.layers))]

    assert all(folded_layers(short))
    assert all(folded_layers(short, takes=3))  # the takes of one prompt read the same text
    assert not any(folded_layers(long))
    assert fast.step_bytes(0, rows=2, folded_text_length=text_length) < fast.step_bytes(0, rows=2)


ENGINES = [("int8", True), ("int4", True), ("int8", False), ("fp32", False)]
"""(precision, native step): the served engines, and the torch step without the library."""


@pytest.mark.parametrize(("precision", "native"), ENGINES)
def test_a_prefilled_prompt_leaves_the_caches_decoding_it_one_position_at_a_time_would(
    tiny_model_dir: Path, precision: Any, native: bool
) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision, native=native)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    length, prompt = 120, 70
    sequence = torch.randint(0, engine.vocab_size, (1, 4, length), generator=torch.Generator().manual_seed(4))
    sequence[:, :, 0] = engine.start_token_id
    stepped = engine.teacher_forced_logits(ids, mask, sequence, guidance_scale=3.0)[prompt:]
    with torch.inference_mode():
        hidden, text_mask = engine._encode_text(ids, mask)
        state = engine._new_state(hidden, text_mask, rows=2, total_len=length)
        assert (state.native is not None) == native
        engine._prefill(state, sequence[:, :, :prompt])
        prefilled = []
        for t in range(prompt, length - 1):
            cond, uncond = engine._step(state, sequence[:, :, t].repeat(2, 1), t).chunk(2)
            prefilled.append(uncond + (cond - uncond) * 3.0)
    scale = float(stepped.abs().max())
    # The native steps attend over int8 keys and values; the prefill attends over the float ones.
    tolerance = 1e-3 if native else 1e-5
    torch.testing.assert_close(torch.stack(prefilled), stepped, rtol=0, atol=tolerance * scale)


def window_logits(engine: MusicgenModel, inputs: Any, codes: torch.Tensor, window: Window) -> torch.Tensor:
    """The greedy choices a window's steps would make one position at a time, along `codes` (1,
    batch, K, frames) over `window`: (batch, K, positions) argmax of each step's logits."""
    length = window.frames + engine.num_codebooks
    part = codes[0, :, :, window.start : window.end]
    sequence = sequence_from_codes(part, length, engine.start_token_id, engine.pad_token_id)
    logits = engine.teacher_forced_logits(
        inputs["input_ids"], inputs["attention_mask"], sequence, guidance_scale=3.0
    )  # fmt: skip
    return logits.argmax(-1).permute(1, 2, 0)


def decoded_positions(engine: MusicgenModel, window: Window) -> torch.Tensor:
    """(K, positions - 1) bool: the positions after the start a window samples (not given by its
    prompt, not forced by the delay pattern)."""
    length = window.frames + engine.num_codebooks
    forced = delay_forced(engine.num_codebooks, length)
    given = given_positions(engine.num_codebooks, window.prompt, length)
    return (~forced & ~given)[:, 1:]


def test_past_one_window_each_window_continues_from_the_previous_ones_overlap(tiny_model_dir: Path) -> None:
    # fp32, greedy: the prefill and the steps agree to float rounding, so every token can be checked.
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision="fp32")
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    options: dict[str, Any] = {"guidance_scale": 3.0, "temperature": 0.0, "top_k": 250, "seed": 0}
    codes = engine.generate_clip(inputs["input_ids"], inputs["attention_mask"], frames=35 * 50, **options)
    assert codes.shape == (1, 1, 4, 35 * 50)
    first, second = engine.window_shape.plan(35 * 50)
    # The second window's prompt is the first's last 12 s of codes, given as they are; each token
    # after it is what decoding that prompt one position at a time picks.
    assert (second.start, second.prompt) == (first.end - 600, 600)
    free = decoded_positions(engine, second)
    picked = sequence_from_codes(
        codes[0, :, :, second.start : second.end], second.frames + 4, engine.start_token_id, engine.pad_token_id
    )[:, :, 1:]
    assert torch.equal(picked[:, free], window_logits(engine, inputs, codes, second)[:, free])


@pytest.mark.parametrize(("precision", "seconds", "windows"), [("int8", 55, 3), ("int4", 35, 2)])
def test_the_native_engine_continues_each_window_from_the_previous_ones_overlap(
    tiny_model_dir: Path, precision: Any, seconds: int, windows: int
) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    options: dict[str, Any] = {"guidance_scale": 3.0, "temperature": 0.0, "top_k": 250, "seed": 0}
    codes = engine.generate_clip(ids, mask, frames=seconds * 50, **options)
    assert codes.shape == (1, 1, 4, seconds * 50)
    plan = engine.window_shape.plan(seconds * 50)
    assert len(plan) == windows
    # The first window is what a clip of one window gives.
    assert torch.equal(codes[..., : plan[0].end], engine.generate_codes(ids, mask, steps=1500 + 3, **options))
    for window in plan[1:]:
        free = decoded_positions(engine, window)
        part = codes[0, :, :, window.start : window.end]
        picked = sequence_from_codes(part, window.frames + 4, engine.start_token_id, engine.pad_token_id)[:, :, 1:]
        agree = (picked[:, free] == window_logits(engine, inputs, codes, window)[:, free]).float().mean()
        # The prefill attends over float keys where the steps read int8 ones: a near tie between
        # two of the 64 codes may go the other way. A window that ignored its prompt agrees on ~1/64.
        assert agree > 0.99


@pytest.mark.parametrize(("precision", "native"), [("int8", True), ("fp32", False)])
def test_takes_are_distinct_and_each_depends_only_on_its_seed(
    tiny_model_dir: Path, precision: Any, native: bool
) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision=precision, native=native)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")

    def takes(seed: int, count: int) -> torch.Tensor:
        return engine.generate_codes(
            inputs["input_ids"], inputs["attention_mask"],
            steps=60, guidance_scale=3.0, temperature=1.0, top_k=250, seed=seed, takes=count,
        )[0]  # fmt: skip

    three = takes(7, 3)
    assert three.shape == (3, 4, 60 + 1 - 4)
    assert torch.equal(three, takes(7, 3))
    assert not torch.equal(three[0], three[1])
    assert not torch.equal(three[1], three[2])
    # A take's draws come from its own seed, and its rows step as they would alone: the same take,
    # one place earlier in a batch, or alone.
    assert torch.equal(three[1:], takes(8, 3)[:2])
    assert torch.equal(three[1], takes(8, 1)[0])


def test_a_clip_of_several_takes_decodes_each_take(tiny_model_dir: Path) -> None:
    model, processor = load(tiny_model_dir)
    engine = MusicgenModel.from_transformers(model, precision="int8")
    engine.prepare_to_serve()
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    codes = engine.generate_clip(
        inputs["input_ids"], inputs["attention_mask"],
        frames=31 * 50, guidance_scale=3.0, temperature=1.0, top_k=250, seed=2, takes=2,
    )  # fmt: skip
    assert codes.shape == (1, 2, 4, 31 * 50)
    assert not torch.equal(codes[0, 0], codes[0, 1])
    audio = engine.decode_audio(codes)
    assert audio.shape == (2, 1, 31 * 32000)
    torch.testing.assert_close(audio[1:], engine.decode_audio(codes[:, 1:]), rtol=0, atol=1e-5)


def test_fp32_decodes_a_clip_longer_than_a_window_in_chunks(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir)
    frames = 1500 + 37
    codes = torch.randint(0, 64, (1, 1, 4, frames), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        whole = model.audio_encoder.decode(codes, audio_scales=[None]).audio_values
    chunked = MusicgenModel.from_transformers(model, precision="fp32").decode_audio(codes)
    assert chunked.shape == whole.shape == (1, 1, frames * 640)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5 * float(whole.abs().max()))
