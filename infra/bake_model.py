"""Bake the model into the Lambda image: `python bake_model.py SOURCE TARGET`.

Loads SOURCE (a Hugging Face hub id or a directory) and saves it with `save_pretrained` to
TARGET, which the image's MODEL_ID names: only safetensors weights, the configs and the
tokenizer, nothing the app would fetch at run time. Beside them it bakes a serving artifact for
each quantized precision (`handler.musicgen.artifact`: safetensors and JSON, the same format a
first start bakes into the artifact cache), which the app loads instead of converting the fp32
weights at every cold start.
"""

import sys
from pathlib import Path
from typing import Any


def bake(source: str, target: Path) -> None:
    """Save the processor and model of `source` to `target`, and an artifact per quantized precision."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    processor: Any = AutoProcessor.from_pretrained(source)  # type: ignore[no-untyped-call]
    model: Any = MusicgenForConditionalGeneration.from_pretrained(source)
    target.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(target)
    model.save_pretrained(target)
    del model
    # save_pretrained writes the weights owner-only; Lambda runs the image as another user.
    for path in target.iterdir():
        path.chmod(0o644)

    from handler.musicgen.artifact import artifact_dir_name, save_artifact
    from handler.musicgen.loaders import convert, resolve_source
    from handler.settings import QUANTIZED

    saved = resolve_source(str(target))
    for precision in sorted(QUANTIZED):
        converted, tokenizer = convert(saved, precision)
        save_artifact(converted, tokenizer, target / artifact_dir_name(precision), {"model_id": source})


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SOURCE TARGET", file=sys.stderr)
        return 2
    bake(argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
