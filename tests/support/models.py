"""Models, artifacts and tampered files the model tests build."""

import pickle
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from handler.musicgen.model import MusicgenModel
from handler.musicgen.tokenizer import PromptTokenizer
from handler.settings import Precision

PROMPT = "a lofi hip hop beat with smooth jazz piano"


def converted(model_dir: Path, precision: Precision) -> MusicgenModel:
    """The model of `model_dir` loaded whole by transformers and converted: the reference path."""
    return MusicgenModel.from_transformers(MusicgenForConditionalGeneration.from_pretrained(model_dir), precision)


def prompt_tokenizer(model_dir: Path) -> PromptTokenizer:
    processor: Any = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    return PromptTokenizer.from_processor(processor)


def sampled_codes(model: MusicgenModel, tokenizer: PromptTokenizer, steps: int = 24, seed: int = 5) -> torch.Tensor:
    """Codes sampled with guidance and a fixed seed: equal models give equal codes."""
    input_ids, attention_mask = tokenizer([PROMPT])
    return model.generate_codes(
        input_ids, attention_mask, steps=steps, guidance_scale=3.0, temperature=1.0, top_k=50, seed=seed
    )


class _OpensAFile:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def code_running_pickle(marker: Path) -> bytes:
    """A pickle that creates `marker` when it is loaded."""
    return pickle.dumps(_OpensAFile(marker))
