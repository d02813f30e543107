"""The plain-torch T5 text encoder against transformers' T5EncoderModel."""

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoProcessor, MusicgenForConditionalGeneration, T5Config, T5EncoderModel

from handler.musicgen import module_tree
from handler.musicgen.kernel_linear import KernelLinear, quantize_linears
from handler.musicgen.text_encoder import T5TextEncoder
from handler.native import runtime
from handler.native.packing import Int8Linear
from tests.support.infra_files import ROOT

PROMPTS = ["80s pop track with bassy drums and synth", "lofi chill"]
T5_BASE_SHAPE: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 3072,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "relu",
    "layer_norm_epsilon": 1e-6,
}


def reference(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return out


def encode(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = encoder(input_ids, attention_mask)
    return out


def long_batch(vocab_size: int, length: int = 150, padded_from: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows longer than max_distance; the second is right-padded from `padded_from`."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, padded_from:] = 0
    return input_ids, attention_mask


@pytest.fixture(scope="module")
def tiny_text_encoder(tiny_model_dir: Path) -> Any:
    model: Any = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    return model.eval().text_encoder


@pytest.fixture(scope="module")
def t5_base_shaped() -> Any:
    torch.manual_seed(0)
    model: Any = T5EncoderModel(T5Config(num_layers=2, **T5_BASE_SHAPE))
    return model.eval()


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_tiny_musicgen_text_encoder_is_bit_identical(
    tiny_model_dir: Path, tiny_text_encoder: Any, prompts: list[str]
) -> None:
    processor: Any = AutoProcessor.from_pretrained(tiny_model_dir)  # type: ignore[no-untyped-call]
    inputs = processor(text=prompts, padding=True, return_tensors="pt")
    if len(prompts) > 1:
        assert not bool(inputs["attention_mask"].all())  # the batch really is padded
    encoder = T5TextEncoder.from_transformers(tiny_text_encoder).eval()
    expected = reference(tiny_text_encoder, inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(encode(encoder, inputs["input_ids"], inputs["attention_mask"]), expected)


@pytest.mark.parametrize("rows", [slice(0, 1), slice(0, 2)], ids=["unpadded", "padded-batch"])
def test_t5_base_shape_past_max_distance_is_bit_identical(t5_base_shaped: Any, rows: slice) -> None:
    input_ids, attention_mask = long_batch(T5_BASE_SHAPE["vocab_size"])
    input_ids, attention_mask = input_ids[rows], attention_mask[rows]
    encoder = T5TextEncoder.from_transformers(t5_base_shaped).eval()
    expected = reference(t5_base_shaped, input_ids, attention_mask)
    assert torch.equal(encode(encoder, input_ids, attention_mask), expected)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_variants_are_bit_identical(attn_implementation: str, feed_forward_proj: str) -> None:
    torch.manual_seed(1)
    config = T5Config(
        vocab_size=300,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=40,
        feed_forward_proj=feed_forward_proj,
    )
    model: Any = T5EncoderModel(config)
    model.eval()
    model.set_attn_implementation(attn_implementation)
    encoder = T5TextEncoder.from_transformers(model).eval()
    assert encoder.attn_implementation == attn_implementation
    input_ids, attention_mask = long_batch(config.vocab_size, length=60, padded_from=35)
    for ids, mask in ((input_ids[:1], attention_mask[:1]), (input_ids, attention_mask)):
        assert torch.equal(encode(encoder, ids, mask), reference(model, ids, mask))


def test_unsupported_feed_forward_raises() -> None:
    config = T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-silu"
    )
    with pytest.raises(NotImplementedError, match="gated-silu"):
        T5TextEncoder.from_transformers(T5EncoderModel(config))


def test_no_transformers_objects_remain(tiny_text_encoder: Any) -> None:
    encoder = T5TextEncoder.from_transformers(tiny_text_encoder)
    for module in encoder.modules():
        assert not type(module).__module__.startswith("transformers")
        for value in vars(module).values():
            assert not type(value).__module__.startswith("transformers")
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6 * len(tiny_text_encoder.encoder.block)  # q, k, v, o, wi, wo per block


def test_int8_through_the_kernel_stays_close_and_replaces_every_linear(t5_base_shaped: Any) -> None:
    input_ids, attention_mask = long_batch(T5_BASE_SHAPE["vocab_size"])
    encoder = T5TextEncoder.from_transformers(t5_base_shaped).eval()
    expected = encode(encoder, input_ids, attention_mask)
    quantize_linears(encoder)
    assert not any(isinstance(m, nn.Linear) for m in encoder.modules())
    assert sum(isinstance(m, KernelLinear) for m in encoder.modules()) == 2 * 6
    assert runtime.best() is not None, "make builds the kernels before the tests"
    out = encode(encoder, input_ids, attention_mask)
    assert not torch.equal(out, expected)  # really ran int8
    # Measured about 1-2% relative error for random T5-base-shaped weights.
    assert float((out - expected).norm() / expected.norm()) < 0.05
    assert float(torch.nn.functional.cosine_similarity(out, expected, dim=-1).min()) > 0.995


def test_kernel_linear_equals_its_torch_arithmetic() -> None:
    torch.manual_seed(0)
    linear = KernelLinear(Int8Linear.from_linear(nn.Linear(72, 40)))
    x = torch.randn(3, 13, 72)  # more rows than the kernel takes at once
    expected = linear.packed(x.reshape(-1, 72)).view(3, 13, 40)
    torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)


def test_saved_encoder_runs_without_transformers(tiny_text_encoder: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    input_ids, attention_mask = long_batch(tiny_text_encoder.config.vocab_size, length=20, padded_from=12)
    encoders = {"fp32": T5TextEncoder.from_transformers(tiny_text_encoder).eval()}
    encoders["int8"] = T5TextEncoder.from_transformers(copy.deepcopy(tiny_text_encoder)).eval()  # no shared tensors
    quantize_linears(encoders["int8"])
    tensors: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    descriptions = {name: module_tree.describe(encoder, f"{name}.", tensors) for name, encoder in encoders.items()}
    for name, encoder in encoders.items():
        tensors[f"expected_{name}"] = encode(encoder, input_ids, attention_mask)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp_path / "encoders.safetensors"))
    (tmp_path / "encoders.json").write_text(json.dumps(descriptions))
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from safetensors.torch import load_file
        from handler.musicgen import module_tree
        tensors = load_file({str(tmp_path / "encoders.safetensors")!r})
        descriptions = json.loads(open({str(tmp_path / "encoders.json")!r}).read())
        with torch.inference_mode():
            for name in ("fp32", "int8"):
                encoder = module_tree.rebuild(descriptions[name], tensors)
                out = encoder(tensors["input_ids"], tensors["attention_mask"])
                print(name, tuple(out.shape), torch.equal(out, tensors["expected_" + name]))
        print("transformers loaded:", "transformers" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    hidden = tiny_text_encoder.config.d_model
    assert result.stdout.splitlines() == [
        f"fp32 (2, 20, {hidden}) True",
        f"int8 (2, 20, {hidden}) True",
        "transformers loaded: False",
    ]
