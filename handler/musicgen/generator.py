"""The generation engine: MusicGen loaded once per process, one generation at a time."""

import contextlib
import contextvars
import logging
import math
import os
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
from handler.generation import GenerationParams
from handler.musicgen.windows import WindowShape
from handler.observability.metrics import record_generation, record_model_load
from handler.observability.traces import Stage, span
from handler.settings import Precision, default_cache_dir

logger = logging.getLogger(__name__)

MUSICGEN_STEP_SHAPE = (50, 4, 2048)
"""MusicGen's frames per second, codebooks and positions, for estimates made before the model has loaded."""

DEFAULT_TOP_K = 250
DECODE_SHARE = 0.95
"""Share of the progress bar given to the decode steps; EnCodec decoding takes the rest."""

DEFAULT_STEP_SECONDS = 0.05
DEFAULT_LOAD_SECONDS = 10.0
"""Speed assumed until this instance has measured its own: conservative for musicgen-small on Lambda."""

TAKE_STEP_SHARE = 0.2
"""What each take beyond the first adds to a decode step's time (and its share of EnCodec): the
step streams the weights once for every take, so 4 takes cost ~1.6 steps, the issue's target."""
PREFILL_STEP_SHARE = 0.25
"""A prompt position's prefill (a longer clip's later windows), per take, as a share of one decode
step: batched products over many positions run compute-bound, ~4x cheaper a position (measured on
musicgen-small's shape)."""

ProgressCallback = Callable[[float], None]
"""Called with the fraction of decode steps done, from 0 to 1."""

ENGINE_NICENESS = 10
"""How much lower than the rest of the process the engine's threads are scheduled: a health check or
a job's status is answered as soon as it arrives, even while both CPUs decode. The engine still gets
every cycle the server leaves idle; on Lambda, where nothing else runs, it changes nothing."""

_engine_thread_ids: set[int] = set()


def _start_engine_thread() -> None:
    _engine_thread_ids.add(threading.get_ident())
    # Linux schedules each thread by its own niceness, and the OpenMP workers this thread starts
    # inherit it; raising one's own niceness needs no privilege.
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + ENGINE_NICENESS))


_engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine", initializer=_start_engine_thread)
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
    # In the caller's context, so the engine's log lines carry the request's or job's keys.
    return _engine_thread.submit(contextvars.copy_context().run, work).result()


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded; the message is safe to show to clients."""


class GenerationFailedError(RuntimeError):
    """Generation ran but did not produce usable audio."""


class MusicGenerator(Protocol):
    """Turns a prompt into mono float audio of exactly the requested duration, one row per take."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def load_retry_in(self) -> float | None:
        """Seconds until a failed load is tried again (None: not waiting to retry)."""
        ...

    @property
    def artifact(self) -> "ArtifactInfo | None":
        """Which model serves, once loaded."""
        ...

    def load(self) -> None: ...

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]:
        """(params.takes, samples): take `j` seeded `params.seeds[j]`."""
        ...

    def estimate_seconds(self, duration: int, takes: int = 1) -> float:
        """Expected wall time to generate `takes` takes of `duration` seconds now, loading included."""
        ...


class SpeedMeter:
    """Decode speed measured on this instance, starting from a prior until it has measured: the
    seconds of one decode step of one take, all costs of a generation counted in such steps
    (see `generation_work`)."""

    SMOOTHING = 0.5

    def __init__(self, step_seconds: float, load_seconds: float) -> None:
        self.step_seconds = step_seconds
        self.load_seconds = load_seconds

    def record_generation(self, steps: float, seconds: float) -> None:
        measured = seconds / max(steps, 1.0)
        self.step_seconds += self.SMOOTHING * (measured - self.step_seconds)

    def record_load(self, seconds: float) -> None:
        self.load_seconds = seconds

    def estimate(self, steps: float, loaded: bool) -> float:
        return steps * self.step_seconds + (0.0 if loaded else self.load_seconds)


@dataclass(frozen=True)
class ArtifactInfo:
    """Which model serves: its precision, where it came from and its artifact's name (see
    `handler.musicgen.loaders`)."""

    precision: Precision
    origin: str
    artifact: str | None
    kernels: str | None = None
    """The native kernels' build that runs the decode step, None where torch runs it."""
    audio_decoder_dtype: str = "float32"
    """What EnCodec's upsampling computes in: bfloat16 where torch has bf16 natively."""


@dataclass(frozen=True)
class _LoadedModel:
    model: Any
    tokenizer: Any
    info: ArtifactInfo
    sample_rate: int
    frame_rate: int
    num_codebooks: int
    top_k: int
    max_positions: int

    def work(self, duration: int, takes: int) -> float:
        return generation_work(duration, takes, self.frame_rate, self.num_codebooks, self.max_positions)


class MusicgenGenerator:
    """MusicGen from `model_id` (hub id or directory), loaded on first use with its decoder's
    Linear layers in `precision`: from a baked artifact where there is one, else converted from
    the checkpoint and, for the quantized precisions, baked into `cache_dir` for later starts.

    A failed load is not tried again by every request: the next try waits `LOAD_RETRY_FIRST_S`,
    doubling after each failure up to `LOAD_RETRY_MAX_S` (a missing or broken model rarely
    mends itself within seconds, and each try costs the full load)."""

    LOAD_RETRY_FIRST_S = 10.0
    LOAD_RETRY_MAX_S = 300.0

    def __init__(
        self,
        model_id: str,
        precision: Precision = "int8",
        cache_dir: Path | None = None,
        default_sample_rate: int = 32000,
        speed: SpeedMeter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_id = model_id
        self.cache_dir = cache_dir or default_cache_dir()
        self.precision = effective_precision(precision)
        self._default_sample_rate = default_sample_rate
        self.speed = speed or SpeedMeter(DEFAULT_STEP_SECONDS, DEFAULT_LOAD_SECONDS)
        self._loaded: _LoadedModel | None = None
        self._load_error: str | None = None
        self._clock = clock
        self._load_failures = 0
        self._retry_at = -math.inf

    @property
    def sample_rate(self) -> int:
        return self._loaded.sample_rate if self._loaded else self._default_sample_rate

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_error(self) -> str | None:
        return self._load_error

    @property
    def load_retry_in(self) -> float | None:
        if self._loaded is not None or self._load_error is None:
            return None
        return max(0.0, self._retry_at - self._clock())

    @property
    def artifact(self) -> "ArtifactInfo | None":
        return self._loaded.info if self._loaded else None

    def load(self) -> None:
        """Load the model once; later calls return at once. Raises ModelUnavailableError."""
        if self._loaded is None:
            on_engine_thread(self._load_once)

    def _load_once(self) -> _LoadedModel:
        if self._loaded is not None:  # loaded by a call queued before this one
            return self._loaded
        if self._load_error is not None and self._clock() < self._retry_at:
            raise ModelUnavailableError(
                f"{self._load_error}; next try in {math.ceil(self._retry_at - self._clock())} s"
            )
        started = time.perf_counter()
        try:
            with span(Stage.MODEL_LOAD):
                self._loaded = _load(self.model_id, self.precision, self.cache_dir)
            self._load_error = None
            self._load_failures = 0
            seconds = time.perf_counter() - started
            self.speed.record_load(seconds)
            record_model_load(seconds, self._loaded.info.precision)
            return self._loaded
        except Exception as exc:
            logger.exception("model load failed", extra={"model_id": self.model_id})
            self._load_failures += 1
            delay = min(self.LOAD_RETRY_MAX_S, self.LOAD_RETRY_FIRST_S * 2 ** (self._load_failures - 1))
            self._retry_at = self._clock() + delay
            self._load_error = f"model '{self.model_id}' could not be loaded ({type(exc).__name__})"
            raise ModelUnavailableError(self._load_error) from exc

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]:
        """Generate `params.takes` takes of `params.duration` seconds, (takes, samples), on the
        engine thread: one generation runs at a time."""
        return on_engine_thread(lambda: self._generate_now(params, on_progress))

    def _generate_now(self, params: GenerationParams, on_progress: ProgressCallback | None) -> npt.NDArray[np.float32]:
        loaded = self._load_once()
        started = time.perf_counter()
        audio = _generate(loaded, params, on_progress)
        seconds = time.perf_counter() - started
        self.speed.record_generation(loaded.work(params.duration, params.takes), seconds)
        record_generation(seconds, params.duration * params.takes, loaded.info.precision)
        return audio

    def estimate_seconds(self, duration: int, takes: int = 1) -> float:
        loaded = self._loaded
        shape = (loaded.frame_rate, loaded.num_codebooks, loaded.max_positions) if loaded else MUSICGEN_STEP_SHAPE
        return self.speed.estimate(generation_work(duration, takes, *shape), loaded is not None)


def _load(model_id: str, precision: Precision, cache_dir: Path) -> _LoadedModel:
    from handler.musicgen.loaders import load_model

    loaded = load_model(model_id, precision, cache_dir)
    model = loaded.model
    return _LoadedModel(
        model=model,
        tokenizer=loaded.tokenizer,
        info=ArtifactInfo(
            loaded.precision,
            loaded.origin,
            loaded.artifact,
            kernels=model.kernel_build,
            audio_decoder_dtype=str(model.audio_decoder.compute_dtype).removeprefix("torch."),
        ),
        sample_rate=model.sampling_rate,
        frame_rate=model.frame_rate,
        num_codebooks=model.num_codebooks,
        top_k=int(model.top_k or DEFAULT_TOP_K),
        max_positions=model.max_positions,
    )


def decode_steps(duration: int, frame_rate: int, num_codebooks: int, max_positions: int = 2048) -> int:
    """Decode steps for `duration` seconds: one per frame plus the codebook delay pattern, per
    window for a clip longer than one (`handler.musicgen.windows`)."""
    shape = WindowShape.for_model(frame_rate, max_positions, num_codebooks)
    return shape.decode_steps(duration * frame_rate, num_codebooks)


def generation_work(duration: int, takes: int, frame_rate: int, num_codebooks: int, max_positions: int) -> float:
    """A generation's cost in decode steps of one take: its steps, each dearer by the takes beyond
    the first, and the prefill of its later windows' prompts."""
    shape = WindowShape.for_model(frame_rate, max_positions, num_codebooks)
    frames = duration * frame_rate
    steps = shape.decode_steps(frames, num_codebooks)
    return steps * (1 + TAKE_STEP_SHARE * (takes - 1)) + PREFILL_STEP_SHARE * takes * shape.prompt_frames(frames)


def _generate(
    loaded: _LoadedModel, params: GenerationParams, on_progress: ProgressCallback | None
) -> npt.NDArray[np.float32]:
    input_ids, attention_mask = loaded.tokenizer([params.prompt])

    def report_step(done: int, total: int) -> None:
        assert on_progress is not None
        # The last few percent are EnCodec decoding.
        on_progress(DECODE_SHARE * done / total)

    with span(Stage.DECODE):
        codes = loaded.model.generate_clip(
            input_ids,
            attention_mask,
            frames=params.duration * loaded.frame_rate,
            guidance_scale=params.guidance_scale,
            temperature=params.temperature,
            top_k=loaded.top_k,
            seed=params.seed,
            takes=params.takes,
            on_step=report_step if on_progress else None,
        )
    with span(Stage.ENCODEC):
        samples = loaded.model.decode_audio(codes)[:, 0].float().numpy()
    expected = params.duration * loaded.sample_rate
    if samples.shape != (params.takes, samples.shape[-1]) or samples.shape[-1] < expected:
        raise GenerationFailedError(f"model produced {samples.shape} samples, expected ({params.takes}, {expected})")
    if on_progress:
        on_progress(1.0)
    return np.ascontiguousarray(samples[:, :expected], dtype=np.float32)


def effective_precision(requested: Precision) -> Precision:
    """`requested`, except bf16 on a CPU without bf16 instructions, which falls back to int8."""
    if requested == "bf16" and not cpu_has_bf16():
        logger.warning("bf16 requested but this CPU has no bf16 instructions; using int8")
        return "int8"
    return requested
