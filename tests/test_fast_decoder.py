"""The lean decode loop against transformers' own `generate`, on the tiny model."""

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from handler.fast_decoder import FastMusicgen, cpu_quota_threads

PROMPTS = ["80s pop track with bassy drums and synth", "lofi chill"]


def load(model_dir: Path) -> tuple[Any, Any]:
    model = MusicgenForConditionalGeneration.from_pretrained(model_dir)
    return model, AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("guidance", [3.0, 1.0])
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_fp32_greedy_audio_equals_transformers_generate(
    tiny_model_dir: Path, guidance: float, prompts: list[str]
) -> None:
    model, processor = load(tiny_model_dir)
    inputs = processor(text=prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=64)
    fast = FastMusicgen(load(tiny_model_dir)[0], precision="fp32")
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


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_sampling_is_seeded(tiny_model_dir: Path, precision: Any) -> None:
    model, processor = load(tiny_model_dir)
    inputs = processor(text=PROMPTS[:1], return_tensors="pt")
    fast = FastMusicgen(model, precision=precision)
    options: dict[str, Any] = {"steps": 40, "guidance_scale": 3.0, "temperature": 1.0, "top_k": 250}
    first = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=7, **options)
    again = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=7, **options)
    other = fast.generate_codes(inputs["input_ids"], inputs["attention_mask"], seed=8, **options)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (1, 1, 4, 40 + 1 - 4)


def test_int8_replaces_the_decoder_linears_with_quantized_ones(tiny_model_dir: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    fast = FastMusicgen(load(tiny_model_dir)[0], precision="int8")
    linears = [m for m in [*fast.layers.modules(), fast.lm_head] if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in [*fast.layers.modules(), fast.lm_head] if isinstance(m, DynamicQuantizedLinear)]
    assert linears == []
    assert len(quantized) == 2 * 7 + 1  # per layer: qkv, o, xq, xkv, xo, fc1, fc2; and the fused heads


def test_thread_count_respects_the_cpus_this_process_may_use() -> None:
    import os

    threads = cpu_quota_threads()
    assert 1 <= threads <= len(os.sched_getaffinity(0))
