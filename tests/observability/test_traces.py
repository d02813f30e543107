"""Traces: a subsegment per stage of a generation on Lambda; nothing built or sent elsewhere."""

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler.audio.output import DEFAULT_OUTPUT
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.music_files import make_music_file
from handler.musicgen.generator import MusicgenGenerator
from handler.observability import traces
from handler.observability.traces import Stage, span, traced_lambda_handler, tracer
from handler.settings import Settings
from handler.storage import LocalStorage
from tests.support.jobs import WaitableJobQueue
from tests.support.observability import RecordingTracer


@pytest.fixture
def fresh_tracer() -> Iterator[None]:
    """`tracer()` decided afresh for the test's environment, and again after it."""
    tracer.cache_clear()
    yield
    tracer.cache_clear()


@pytest.mark.usefixtures("fresh_tracer")
def test_outside_lambda_no_tracer_is_built_and_spans_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    assert tracer() is None
    with span(Stage.DECODE):
        pass

    def handler(event: dict[str, str], context: object) -> dict[str, str]:
        return event

    assert traced_lambda_handler(handler) is handler


@pytest.mark.usefixtures("fresh_tracer")
def test_on_lambda_powertools_trace_disabled_turns_it_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    active = tracer()
    assert active is not None
    assert active.disabled
    with span(Stage.STORE):  # a no-op: nothing is sent to an X-Ray daemon
        pass
    assert "aws_xray_sdk" in sys.modules


def test_a_generation_traces_each_stage_in_order(
    tiny_model_dir: Path, settings: Settings, local_storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = RecordingTracer()
    monkeypatch.setattr(traces, "tracer", lambda: recording)
    generator = MusicgenGenerator(str(tiny_model_dir))
    services = Services(settings=settings, storage=local_storage, generator=generator, jobs=WaitableJobQueue())
    params = GenerationParams(prompt="a bell", duration=1, guidance_scale=3.0, temperature=1.0, seed=1)
    make_music_file(services, params, DEFAULT_OUTPUT, ["gen_20250101_000000_cccccccc.wav"], datetime.now(UTC))
    assert recording.subsegments == ["model load", "decode", "EnCodec", "encode", "store"]
