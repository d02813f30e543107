"""Metrics: EMF documents on stdout, read back as CloudWatch would read them."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler.audio.output import AudioFormat, AudioOutput, Normalization
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.music_files import make_music_file
from handler.musicgen.generator import MusicgenGenerator
from handler.observability.metrics import BREAKDOWNS, NAMESPACE, UNITS, Metric, emit
from handler.settings import Settings
from handler.storage import LocalStorage, StorageError
from tests.support.app import serve
from tests.support.jobs import WaitableJobQueue
from tests.support.observability import data_points, log_lines, points_named

PARAMS = GenerationParams(prompt="rain on a tin roof", duration=1, guidance_scale=3.0, temperature=1.0, seed=7, takes=2)


def test_a_generation_prints_its_metrics_as_emf(
    tiny_model_dir: Path, settings: Settings, local_storage: LocalStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fresh engine, so its model load is measured here too.
    generator = MusicgenGenerator(str(tiny_model_dir))
    services = Services(settings=settings, storage=local_storage, generator=generator, jobs=WaitableJobQueue())
    output = AudioOutput(AudioFormat.FLAC, Normalization.PEAK)
    make_music_file(
        services,
        PARAMS,
        output,
        ["gen_20250101_000000_aaaaaaaa.flac", "gen_20250101_000000_bbbbbbbb.flac"],
        datetime.now(UTC),
    )
    printed = capsys.readouterr().out
    assert {point.namespace for point in data_points(printed)} == {NAMESPACE}
    assert generator.artifact is not None
    by_precision = [{}, {"precision": generator.artifact.precision}]

    [load] = points_named(printed, "ModelLoadSeconds")
    assert (load.unit, load.dimension_sets) == ("Seconds", by_precision)
    assert 0 < load.value < 600
    [generation] = points_named(printed, "GenerationSeconds")
    assert (generation.unit, generation.dimension_sets) == ("Seconds", by_precision)
    assert 0 < generation.value < 600
    [factor] = points_named(printed, "RealTimeFactor")
    assert (factor.unit, factor.dimension_sets) == ("None", by_precision)
    assert factor.value == pytest.approx(generation.value / (PARAMS.duration * PARAMS.takes))
    [audio] = points_named(printed, "AudioSeconds")
    assert (audio.unit, audio.dimension_sets) == ("Seconds", [{}, {"format": "flac"}])
    assert audio.value == pytest.approx(PARAMS.duration * PARAMS.takes)


def test_requests_are_counted_by_route_template_with_no_unbounded_values(
    settings: Settings, local_storage: LocalStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.doubles import ToneGenerator

    with serve(settings, local_storage, ToneGenerator()) as client:  # type: ignore[arg-type]
        capsys.readouterr()
        assert client.get("/files/gen_20250101_000000_aaaaaaaa.wav").status_code == 404
        assert client.get("/no/such/path").status_code == 404
        assert client.request("PATCH", "/files/x").status_code == 405
        assert client.post("/generate/", json={"text": "drums", "duration": 1}).status_code == 200
        printed = capsys.readouterr().out
    counts = [
        (point.dimension_sets[1]["route"], point.value)
        for point in points_named(printed, "Http4xx") + points_named(printed, "Http5xx")
    ]
    assert counts == [
        ("GET /files/{filename}", 1),
        ("unrouted", 1),
        ("unrouted", 1),
        ("POST /generate/", 0),
        ("GET /files/{filename}", 0),
        ("unrouted", 0),
        ("unrouted", 0),
        ("POST /generate/", 0),
    ]
    assert {len(point.dimension_sets) for point in points_named(printed, "Http5xx")} == {2}


def test_every_storage_error_is_counted_once(capsys: pytest.CaptureFixture[str]) -> None:
    error = StorageError("could not write")
    assert str(error) == "could not write"
    [point] = data_points(capsys.readouterr().out)
    assert (point.name, point.unit, point.value, point.dimension_sets) == ("StorageErrors", "Count", 1, [{}])


def test_a_breakdown_a_metric_does_not_have_is_refused_and_logged(capsys: pytest.CaptureFixture[str]) -> None:
    emit({Metric.JOBS_FAILED: 1}, ("route", "GET /"))
    printed = capsys.readouterr().out
    assert data_points(printed) == []
    assert [line["message"] for line in log_lines(printed)] == ["metric not written"]


def test_metrics_can_be_turned_off_as_powertools_documents(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    emit({Metric.COLD_STARTS: 1})
    assert capsys.readouterr().out == ""


def test_every_metric_has_a_unit_and_breakdowns_are_the_few_dimensions() -> None:
    assert set(UNITS) == set(Metric)
    assert set(BREAKDOWNS.values()) == {"precision", "format", "route"}
