"""The generation engine: MusicGen loaded once per process, one generation at a time."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

MUSICGEN_STEP_SHAPE = (50, 4)
"""MusicGen's frames per second and codebooks, for estimates made before the model has loaded."""

DEFAULT_STEP_SECONDS = 0.05
DEFAULT_LOAD_SECONDS = 10.0
"""Speed assumed until this instance has measured its own: conservative for musicgen-small on Lambda."""

ProgressCallback = Callable[[float], None]
"""Called with the fraction of decode steps done, from 0 to 1."""


@dataclass(frozen=True)
class GenerationParams:
    """What one generation is asked to make."""

    prompt: str
    duration: int
    guidance_scale: float
    temperature: float
    seed: int


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded; the message is safe to show to clients."""


class GenerationFailedError(RuntimeError):
    """Generation ran but did not produce usable audio."""


class MusicGenerator(Protocol):
    """Turns a prompt into mono float audio of exactly the requested duration."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    def load(self) -> None: ...

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]: ...

    def estimate_seconds(self, duration: int) -> float:
        """Expected wall time to generate `duration` seconds now, loading included."""
        ...


class SpeedMeter:
    """Decode speed measured on this instance, starting from a prior until it has measured."""

    SMOOTHING = 0.5

    def __init__(self, step_seconds: float, load_seconds: float) -> None:
        self.step_seconds = step_seconds
        self.load_seconds = load_seconds

    def record_generation(self, steps: int, seconds: float) -> None:
        measured = seconds / max(steps, 1)
        self.step_seconds += self.SMOOTHING * (measured - self.step_seconds)

    def record_load(self, seconds: float) -> None:
        self.load_seconds = seconds

    def estimate(self, steps: int, loaded: bool) -> float:
        return steps * self.step_seconds + (0.0 if loaded else self.load_seconds)


@dataclass(frozen=True)
class _LoadedModel:
    model: Any
    processor: Any
    sample_rate: int
    frame_rate: int
    num_codebooks: int


class TransformersMusicGenerator:
    """MusicGen through transformers, loaded lazily from `model_id` (hub id or directory)."""

    def __init__(
        self,
        model_id: str,
        default_sample_rate: int = 32000,
        speed: SpeedMeter | None = None,
    ) -> None:
        self.model_id = model_id
        self._default_sample_rate = default_sample_rate
        self.speed = speed or SpeedMeter(DEFAULT_STEP_SECONDS, DEFAULT_LOAD_SECONDS)
        self._loaded: _LoadedModel | None = None
        self._load_error: str | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @property
    def sample_rate(self) -> int:
        return self._loaded.sample_rate if self._loaded else self._default_sample_rate

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_error(self) -> str | None:
        return self._load_error

    def load(self) -> None:
        """Load the model once; later calls return at once. Raises ModelUnavailableError."""
        if self._loaded is not None:
            return
        with self._load_lock:
            if self._loaded is not None:
                return
            started = time.perf_counter()
            try:
                self._loaded = _load(self.model_id)
                self._load_error = None
                self.speed.record_load(time.perf_counter() - started)
            except Exception as exc:
                logger.exception("model load failed", extra={"model_id": self.model_id})
                self._load_error = f"model '{self.model_id}' could not be loaded ({type(exc).__name__})"
                raise ModelUnavailableError(self._load_error) from exc

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]:
        """Generate `params.duration` seconds of audio; serialised so one runs at a time."""
        self.load()
        loaded = self._loaded
        assert loaded is not None
        with self._generate_lock:
            started = time.perf_counter()
            audio = _generate(loaded, params, on_progress)
            steps = decode_steps(params.duration, loaded.frame_rate, loaded.num_codebooks)
            self.speed.record_generation(steps, time.perf_counter() - started)
            return audio

    def estimate_seconds(self, duration: int) -> float:
        loaded = self._loaded
        frame_rate, codebooks = (loaded.frame_rate, loaded.num_codebooks) if loaded else MUSICGEN_STEP_SHAPE
        return self.speed.estimate(decode_steps(duration, frame_rate, codebooks), loaded is not None)


def _load(model_id: str) -> _LoadedModel:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    processor: Any = AutoProcessor.from_pretrained(model_id)  # type: ignore[no-untyped-call]
    model: Any = MusicgenForConditionalGeneration.from_pretrained(model_id)
    model.eval()
    audio_config = model.config.audio_encoder
    return _LoadedModel(
        model=model,
        processor=processor,
        sample_rate=int(audio_config.sampling_rate),
        frame_rate=int(audio_config.frame_rate),
        num_codebooks=int(model.config.decoder.num_codebooks),
    )


def decode_steps(duration: int, frame_rate: int, num_codebooks: int) -> int:
    """Decode steps for `duration` seconds: one per frame plus the codebook delay pattern."""
    return duration * frame_rate + num_codebooks - 1


def _generate(
    loaded: _LoadedModel, params: GenerationParams, on_progress: ProgressCallback | None
) -> npt.NDArray[np.float32]:
    import torch
    from transformers import LogitsProcessorList

    steps = decode_steps(params.duration, loaded.frame_rate, loaded.num_codebooks)
    inputs = loaded.processor(text=[params.prompt], padding=True, return_tensors="pt")
    sampling = params.temperature > 0
    options: dict[str, Any] = {
        "do_sample": sampling,
        "guidance_scale": params.guidance_scale if params.guidance_scale > 1 else 1.0,
        "max_new_tokens": steps,
    }
    if sampling:
        options["temperature"] = params.temperature
    processors = LogitsProcessorList([_ProgressReporter(steps, on_progress)] if on_progress else [])
    torch.manual_seed(params.seed)
    with torch.inference_mode():
        audio = loaded.model.generate(**inputs, logits_processor=processors, **options)
    samples = audio[0, 0].float().numpy()
    expected = params.duration * loaded.sample_rate
    if samples.shape[0] < expected:
        raise GenerationFailedError(f"model produced {samples.shape[0]} samples, expected {expected}")
    if on_progress:
        on_progress(1.0)
    return np.ascontiguousarray(samples[:expected], dtype=np.float32)


class _ProgressReporter:
    """A logits processor that only counts decode steps, to report progress."""

    def __init__(self, total_steps: int, on_progress: ProgressCallback) -> None:
        self._total = total_steps
        self._done = 0
        self._on_progress = on_progress

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._done += 1
        self._on_progress(min(self._done / self._total, 1.0))
        return scores
