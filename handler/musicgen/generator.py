"""The generation engine: MusicGen loaded once per process, one generation at a time."""

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from handler.cpu import cpu_has_bf16
from handler.musicgen.tokenizer import TOKENIZER_NAME, PromptTokenizer
from handler.settings import QUANTIZED, Precision

logger = logging.getLogger(__name__)

MUSICGEN_STEP_SHAPE = (50, 4)
"""MusicGen's frames per second and codebooks, for estimates made before the model has loaded."""

DEFAULT_TOP_K = 250
DECODE_SHARE = 0.95
"""Share of the progress bar given to the decode steps; EnCodec decoding takes the rest."""

DEFAULT_STEP_SECONDS = 0.05
DEFAULT_LOAD_SECONDS = 10.0
"""Speed assumed until this instance has measured its own: conservative for musicgen-small on Lambda."""

ProgressCallback = Callable[[float], None]
"""Called with the fraction of decode steps done, from 0 to 1."""

_engine_thread_ids: set[int] = set()
_engine_thread = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="engine", initializer=lambda: _engine_thread_ids.add(threading.get_ident())
)
_Result = TypeVar("_Result")


def on_engine_thread(work: Callable[[], _Result]) -> _Result:
    """Run `work` on the process's one engine thread, one call at a time, and return its result.

    OpenMP keeps a pool of worker threads for each thread that starts parallel work, and libgomp
    stops spinning at its barriers (it sleeps instead) once the process holds more such threads
    than CPUs. A decode step started from a second thread ran ~1.7x slower than from the first, so
    every model load and generation runs on this one thread, whichever thread asks.
    """
    if threading.get_ident() in _engine_thread_ids:
        return work()
    return _engine_thread.submit(work).result()


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
    decoder: Any
    tokenizer: PromptTokenizer
    sample_rate: int
    frame_rate: int
    num_codebooks: int
    top_k: int

    def steps(self, duration: int) -> int:
        return decode_steps(duration, self.frame_rate, self.num_codebooks)


class TransformersMusicGenerator:
    """MusicGen loaded lazily with transformers from `model_id` (hub id or directory).

    Decoding runs in FastMusicgen's lean loop over the model's own modules, with the decoder's
    Linear layers in `precision`.
    """

    def __init__(
        self,
        model_id: str,
        precision: Precision = "int8",
        default_sample_rate: int = 32000,
        speed: SpeedMeter | None = None,
    ) -> None:
        self.model_id = model_id
        self.precision = effective_precision(precision)
        self._default_sample_rate = default_sample_rate
        self.speed = speed or SpeedMeter(DEFAULT_STEP_SECONDS, DEFAULT_LOAD_SECONDS)
        self._loaded: _LoadedModel | None = None
        self._load_error: str | None = None

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
        if self._loaded is None:
            on_engine_thread(self._load_once)

    def _load_once(self) -> _LoadedModel:
        if self._loaded is not None:  # loaded by a call queued before this one
            return self._loaded
        started = time.perf_counter()
        try:
            self._loaded = _load(self.model_id, self.precision)
            self._load_error = None
            self.speed.record_load(time.perf_counter() - started)
            return self._loaded
        except Exception as exc:
            logger.exception("model load failed", extra={"model_id": self.model_id})
            self._load_error = f"model '{self.model_id}' could not be loaded ({type(exc).__name__})"
            raise ModelUnavailableError(self._load_error) from exc

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]:
        """Generate `params.duration` seconds of audio, on the engine thread: one runs at a time."""
        return on_engine_thread(lambda: self._generate_now(params, on_progress))

    def _generate_now(self, params: GenerationParams, on_progress: ProgressCallback | None) -> npt.NDArray[np.float32]:
        loaded = self._load_once()
        started = time.perf_counter()
        audio = _generate(loaded, params, on_progress)
        self.speed.record_generation(loaded.steps(params.duration), time.perf_counter() - started)
        return audio

    def estimate_seconds(self, duration: int) -> float:
        loaded = self._loaded
        frame_rate, codebooks = (loaded.frame_rate, loaded.num_codebooks) if loaded else MUSICGEN_STEP_SHAPE
        return self.speed.estimate(decode_steps(duration, frame_rate, codebooks), loaded is not None)


def _load(model_id: str, precision: Precision) -> _LoadedModel:
    from handler.musicgen.model import artifact_name, load_artifact

    artifact, tokenizer_file = Path(model_id) / artifact_name(precision), Path(model_id) / TOKENIZER_NAME
    if precision in QUANTIZED and artifact.is_file() and tokenizer_file.is_file():
        # Baked at build time: quantized weights as saved, no fp32 decoder read or converted.
        decoder = load_artifact(artifact)
        tokenizer = PromptTokenizer.from_file(tokenizer_file)
    else:
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        from handler.musicgen.model import FastMusicgen

        processor: Any = AutoProcessor.from_pretrained(model_id)  # type: ignore[no-untyped-call]
        tokenizer = PromptTokenizer.from_processor(processor)
        decoder = FastMusicgen(MusicgenForConditionalGeneration.from_pretrained(model_id), precision)
        decoder.prepare_to_serve()
    return _LoadedModel(
        decoder=decoder,
        tokenizer=tokenizer,
        sample_rate=decoder.sampling_rate,
        frame_rate=decoder.frame_rate,
        num_codebooks=decoder.num_codebooks,
        top_k=int(decoder.top_k or DEFAULT_TOP_K),
    )


def decode_steps(duration: int, frame_rate: int, num_codebooks: int) -> int:
    """Decode steps for `duration` seconds: one per frame plus the codebook delay pattern."""
    return duration * frame_rate + num_codebooks - 1


def _generate(
    loaded: _LoadedModel, params: GenerationParams, on_progress: ProgressCallback | None
) -> npt.NDArray[np.float32]:
    input_ids, attention_mask = loaded.tokenizer([params.prompt])

    def report_step(done: int, total: int) -> None:
        assert on_progress is not None
        # The last few percent are EnCodec decoding.
        on_progress(DECODE_SHARE * done / total)

    codes = loaded.decoder.generate_codes(
        input_ids,
        attention_mask,
        steps=loaded.steps(params.duration),
        guidance_scale=params.guidance_scale,
        temperature=params.temperature,
        top_k=loaded.top_k,
        seed=params.seed,
        on_step=report_step if on_progress else None,
    )
    samples = loaded.decoder.decode_audio(codes)[0, 0].float().numpy()
    expected = params.duration * loaded.sample_rate
    if samples.shape[0] < expected:
        raise GenerationFailedError(f"model produced {samples.shape[0]} samples, expected {expected}")
    if on_progress:
        on_progress(1.0)
    return np.ascontiguousarray(samples[:expected], dtype=np.float32)


def effective_precision(requested: Precision) -> Precision:
    """`requested`, except bf16 on a CPU without bf16 instructions, which falls back to int8."""
    if requested == "bf16" and not cpu_has_bf16():
        logger.warning("bf16 requested but this CPU has no bf16 instructions; using int8")
        return "int8"
    return requested
