"""Engines for tests that need to hold or break a generation around the real one."""

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from handler.generation import GenerationParams
from handler.musicgen.generator import ArtifactInfo, MusicGenerator, ProgressCallback


class GatedGenerator:
    """Holds each generation until the test opens the gate, to observe the API meanwhile."""

    def __init__(self, inner: MusicGenerator) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.gate = threading.Event()

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    @property
    def load_error(self) -> str | None:
        return self.inner.load_error

    @property
    def load_retry_in(self) -> float | None:
        return self.inner.load_retry_in

    @property
    def artifact(self) -> ArtifactInfo | None:
        return self.inner.artifact

    def load(self) -> None:
        self.inner.load()

    def estimate_seconds(self, duration: int) -> float:
        return self.inner.estimate_seconds(duration)

    def generate(self, params: GenerationParams, on_progress: ProgressCallback | None = None) -> Any:
        self.started.set()
        assert self.gate.wait(timeout=30)
        return self.inner.generate(params, on_progress)


class SlowGatedGenerator(GatedGenerator):
    """A gated engine that expects every generation to take `estimate_s`, to fill a queue's time."""

    def __init__(self, inner: MusicGenerator, estimate_s: float) -> None:
        super().__init__(inner)
        self.estimate_s = estimate_s

    def estimate_seconds(self, duration: int) -> float:
        return self.estimate_s


class FailingGenerator(GatedGenerator):
    def generate(self, params: GenerationParams, on_progress: ProgressCallback | None = None) -> Any:
        raise RuntimeError("secret internal detail /opt/model")


class LoadWatcher(GatedGenerator):
    """Says when a load of the engine's model has finished; generates ungated."""

    def __init__(self, inner: MusicGenerator) -> None:
        super().__init__(inner)
        self.load_done = threading.Event()
        self.gate.set()

    def load(self) -> None:
        self.inner.load()
        self.load_done.set()


class ToneGenerator:
    """A stand-in engine that answers at once: a seeded chord of the requested length, for tests of
    the HTTP contract that would otherwise spend their time generating."""

    sample_rate = 32000
    loaded = True
    load_error: str | None = None
    load_retry_in: float | None = None
    artifact: ArtifactInfo | None = None

    def load(self) -> None:
        pass

    def estimate_seconds(self, duration: int) -> float:
        return 0.01 * duration

    def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(params.seed)
        t = np.arange(params.duration * self.sample_rate) / self.sample_rate
        frequencies = rng.uniform(110, 880, size=3)
        chord: npt.NDArray[np.float32] = (0.1 * np.sin(2 * np.pi * np.outer(frequencies, t)).sum(axis=0)).astype(
            np.float32
        )
        if on_progress is not None:
            on_progress(0.5)
        return chord
