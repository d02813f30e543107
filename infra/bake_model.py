"""Bake the model into the Lambda image: `python bake_model.py SOURCE TARGET`.

Loads SOURCE (a Hugging Face hub id or a directory) exactly as the app does and saves it with
`save_pretrained` to TARGET, which the image's MODEL_ID names: only safetensors weights, the
configs and the tokenizer, nothing the app would fetch at run time. Beside them it saves the
serving artifacts: the engine with its decoder already in int8, and in int4, which the app loads
instead of converting fp32 weights at every cold start, and the prompt tokenizer as the
`tokenizers` library runs it.
"""

import sys
from pathlib import Path
from typing import Any


def bake(source: str, target: Path) -> None:
    """Save the processor and model of `source` to `target`."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    processor: Any = AutoProcessor.from_pretrained(source)  # type: ignore[no-untyped-call]
    model: Any = MusicgenForConditionalGeneration.from_pretrained(source)
    target.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(target)
    model.save_pretrained(target)
    del model

    from handler.musicgen.model import FastMusicgen, artifact_name, save_artifact
    from handler.musicgen.tokenizer import TOKENIZER_NAME, PromptTokenizer
    from handler.settings import QUANTIZED

    PromptTokenizer.from_processor(processor).save(target / TOKENIZER_NAME)
    for precision in sorted(QUANTIZED):
        # FastMusicgen consumes the model it converts: each artifact starts from the saved weights.
        fresh: Any = MusicgenForConditionalGeneration.from_pretrained(target)
        save_artifact(FastMusicgen(fresh, precision), target / artifact_name(precision))
    # save_pretrained writes the weights owner-only; Lambda runs the image as another user.
    for path in target.iterdir():
        path.chmod(0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SOURCE TARGET", file=sys.stderr)
        return 2
    bake(argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
