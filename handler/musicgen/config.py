"""What the engine needs to know of a MusicGen checkpoint beyond its tensors."""

from dataclasses import asdict, dataclass, fields
from typing import Any, Self, get_args

from handler.settings import Precision


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape, its special tokens and sampling default, and the codec's rates."""

    precision: Precision
    num_codebooks: int
    vocab_size: int
    hidden_size: int
    num_heads: int
    max_positions: int
    activation: str
    pad_token_id: int
    start_token_id: int
    top_k: int | None
    sampling_rate: int
    frame_rate: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_transformers(cls, config: Any, generation_config: Any, precision: Precision) -> Self:
        """From a transformers ``MusicgenConfig`` and the model's ``GenerationConfig``."""
        if precision not in get_args(Precision):
            raise ValueError(f"unknown precision {precision!r}")
        decoder, codec = config.decoder, config.audio_encoder
        if int(decoder.audio_channels) != 1:
            raise NotImplementedError("only mono MusicGen checkpoints are supported")
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else decoder.pad_token_id
        start = generation_config.decoder_start_token_id
        top_k = generation_config.top_k
        return cls(
            precision=precision,
            num_codebooks=int(decoder.num_codebooks),
            vocab_size=int(decoder.vocab_size),
            hidden_size=int(decoder.hidden_size),
            num_heads=int(decoder.num_attention_heads),
            max_positions=int(decoder.max_position_embeddings),
            activation=str(decoder.activation_function),
            pad_token_id=int(pad),
            start_token_id=int(start if start is not None else pad),
            top_k=None if top_k is None else int(top_k),
            sampling_rate=int(codec.sampling_rate),
            frame_rate=int(codec.frame_rate),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: Any) -> Self:
        """From `to_json`'s output; raises ValueError when a value is missing or of the wrong type."""
        if not isinstance(values, dict) or set(values) != {field.name for field in fields(cls)}:
            raise ValueError("the model config does not have this engine's fields")
        config = cls(**values)
        if config.precision not in get_args(Precision):
            raise ValueError(f"unknown precision {config.precision!r}")
        for field in fields(cls):
            value = getattr(config, field.name)
            expected = str if field.name in ("precision", "activation") else int
            if not (isinstance(value, expected) or (field.name == "top_k" and value is None)) or isinstance(
                value, bool
            ):
                raise ValueError(f"model config field {field.name} has the wrong type")
        return config
