"""The prompt tokenizer against MusicGen's own processor."""

from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoProcessor

from handler.musicgen.tokenizer import PromptTokenizer

PROMPTS = [
    "A lofi hip hop beat with smooth jazz piano and rain sounds",
    "  leading, trailing  and   inner spaces  ",
    "Ünïcödé café — naïve 🎵 ﬁ ligature\ttab\nnewline",
    "x",
    "80s pop " * 60,
]


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(tiny_model_dir)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def saved(processor: Any, tmp_path_factory: pytest.TempPathFactory) -> PromptTokenizer:
    """Saved and loaded again, as the bake and a cold start do."""
    path = tmp_path_factory.mktemp("tokenizer") / "prompt-tokenizer.json"
    PromptTokenizer.from_processor(processor).save(path)
    return PromptTokenizer.from_file(path)


@pytest.mark.parametrize("texts", [[p] for p in PROMPTS] + [PROMPTS])
def test_ids_and_mask_equal_the_processors(processor: Any, saved: PromptTokenizer, texts: list[str]) -> None:
    expected = processor(text=texts, padding=True, return_tensors="pt")
    for tokenizer in (PromptTokenizer.from_processor(processor), saved):
        input_ids, attention_mask = tokenizer(texts)
        assert torch.equal(input_ids, expected["input_ids"])
        assert torch.equal(attention_mask, expected["attention_mask"])


def test_a_batch_pads_on_the_right_with_the_pad_token(processor: Any, saved: PromptTokenizer) -> None:
    input_ids, attention_mask = saved(["a much longer prompt here", "a"])
    short = int(attention_mask[1].sum())
    assert short < input_ids.shape[1]
    assert torch.all(input_ids[1, short:] == processor.tokenizer.pad_token_id)
    assert torch.all(attention_mask[1, :short] == 1)


def test_a_tokenizer_that_does_not_pad_is_refused(processor: Any) -> None:
    tokenizer = Tokenizer.from_str(processor.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    with pytest.raises(ValueError, match="pad"):
        PromptTokenizer(tokenizer)
