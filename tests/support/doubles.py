"""Engines for tests that need to hold or break a generation around the real one."""

import threading
from typing import Any

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

    def estimate_seconds(self, duration: int, takes: int = 1) -> float:
        return self.inner.estimate_seconds(duration, takes)

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
