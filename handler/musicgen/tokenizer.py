"""Prompt tokenization with the `tokenizers` library alone, so serving need not import transformers."""

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

TOKENIZER_NAME = "prompt-tokenizer.json"
"""Beside the serving artifact: the exact pipeline the model's processor runs, padding included."""


class PromptTokenizer:
    """Texts to `(input_ids, attention_mask)`, padded on the right to the longest, as MusicGen's processor does."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.padding is None:
            raise ValueError("the tokenizer must pad (its pad token is part of what the model saw)")
        self._tokenizer = tokenizer

    @classmethod
    def from_processor(cls, processor: Any) -> "PromptTokenizer":
        """The tokenizer a transformers MusicGen processor runs.

        Its backend, not tokenizer.json: transformers rebuilds parts of T5's pipeline (the
        pre-tokenizer) when it loads one.
        """
        tokenizer = Tokenizer.from_str(processor.tokenizer.backend_tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.enable_padding(pad_id=processor.tokenizer.pad_token_id, pad_token=processor.tokenizer.pad_token)
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: Path) -> "PromptTokenizer":
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._tokenizer.save(str(path))

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self._tokenizer.encode_batch(texts)
        input_ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        attention_mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long)
        return input_ids, attention_mask
