"""The speed benchmark's smoke run: every measurement runs and reports sane figures."""

import json
from pathlib import Path

import pytest

from benchmarks import fuzz, load
from benchmarks.speed import BUILD_ATTEMPTS, in_one_mode, main
from handler.cpu import cpu_flags, cpu_has_bf16
from handler.native import runtime
from tests.support.native_builds import RUNNABLE


@pytest.fixture(scope="module")
def benchmark_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmarks' model cache, shared by their smoke runs: the first builds and bakes the tiny
    model (as `benchmarks.speed`'s own process), the next finds it there, as a second run would."""
    return tmp_path_factory.mktemp("benchmark-cache")


def test_smoke_benchmark_measures_baseline_engine_http_takes_prompts_long_clips_and_quality(
    tmp_path: Path, benchmark_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "speed.json"
    main(["--smoke", "--cache-dir", str(benchmark_cache), "--out", str(out)])
    report = json.loads(out.read_text())
    best_kernels = runtime.best()
    assert best_kernels is not None
    assert set(report["engines"]) == set(report["http"]) == {"int8", "int4"}
    for side in (report["baseline"], *report["engines"].values()):
        assert side["ms_per_step"] > 0
        assert side["wall_s"] > 0
        assert side["ready_s"] > 0
        assert side["peak_rss_mb"] > 0
    for precision, engine in report["engines"].items():
        assert engine["precision"] == precision
        assert engine["kernels"] == best_kernels.variant.name
        assert engine["warm_ms_per_step"] > 0
        assert engine["warm_wall_s"] > 0
        assert report["http"][precision]["warm_request_s"] > 0
        assert len(report["http"][precision]["stream_gbs_around"]) == 3  # before, between and after
        assert all(gbs > 0 for gbs in report["http"][precision]["stream_gbs_around"])
        assert engine["stream_gbs"] > 0
        assert 0 < engine["floor_ms_per_step"] < engine["warm_ms_per_step"]
        quality = report["quality"][precision]
        assert len(quality["kl_per_codebook"]) == 4
        assert all(kl >= 0 for kl in quality["kl_per_codebook"])
        assert all(0 <= overlap <= 1 for overlap in quality["top250_overlap_per_codebook"])
        assert quality["audio_snr_db"] > 30
        assert quality["encodec_dtype"] in {"bfloat16", "float32"}
    # The smoke run measures the rest in the first precision only (the same code for each; the
    # engines' own tests cover int4's builds, takes, windows and bakes).
    assert set(report["plain_directory"]) == set(report["builds"]) == set(report["takes"]) == set(report["long"])
    assert set(report["prompts"]) == {"int8"}
    assert set(report["long"]) == {"int8"}
    plain = report["plain_directory"]["int8"]
    assert plain["origins"] == ["baked", "cache", "beside the model"]
    assert plain["same_audio_as_image"]
    for start in (plain["first_start"], plain["later_start"]):
        assert start["ready_s"] > start["loaded_s"] > 0
        assert start["peak_rss_mb"] >= start["peak_rss_mb_ready"] > 0
    builds = report["builds"]["int8"]
    assert list(builds) == [variant.name for variant in RUNNABLE]  # every build this CPU runs, best first
    assert all(figures["ms_per_step"] > 0 and figures["floor_ms_per_step"] > 0 for figures in builds.values())
    # the bandwidth read on both sides of the timed clip: the machine's can change between
    assert all(figures["stream_gbs_before"] > 0 and figures["stream_gbs"] > 0 for figures in builds.values())
    # measured again while the memory changed speed during the clip, up to BUILD_ATTEMPTS in all
    for figures in builds.values():
        assert 1 <= figures["attempts"] <= BUILD_ATTEMPTS
        assert figures["one_mode"] == in_one_mode(figures)
        assert figures["one_mode"] or figures["attempts"] == BUILD_ATTEMPTS
    takes = report["takes"]["int8"]
    assert takes["takes"] == 4
    assert takes["ratio"] == takes["takes_s"] / takes["one_take_s"] > 0
    prompts = report["prompts"]["int8"]
    assert prompts["tokens"]["long"] > prompts["tokens"]["short"] > 1
    assert prompts["ratio"] == prompts["long_s"] / prompts["short_s"] > 0
    assert set(prompts["folded"]) == {"short", "long"}
    long = report["long"]["int8"]
    assert long["seconds"] == 35  # past one 30 s window
    assert long["wall_s"] > 0
    assert long["peak_rss_mb"] >= long["loaded_peak_rss_mb"] > 0
    before, after = long["stream_gbs_around"]
    assert before > 0
    assert after > 0
    printed = capsys.readouterr().out
    assert f"(RTF {long['rtf']:.2f}; {before:.0f} -> {after:.0f} GB/s around it)" in printed
    decoded = report["encodec"]["decode_s"]
    served = {"float32", "bfloat16"} if cpu_has_bf16() else {"float32"}
    assert set(decoded) == served | {"float32, torch LSTM and ELU"}
    assert all(seconds > 0 for seconds in decoded.values())
    # a CPU with AVX-512 also measures what an AVX2-only one gets, torch held to AVX2
    assert ("encodec_at_avx2" in report) == ("avx512f" in cpu_flags())
    if "encodec_at_avx2" in report:
        assert (report["encodec_at_avx2"]["torch_isa"], report["encodec_at_avx2"]["kernels"]) == ("AVX2", "avx2")
        assert set(report["encodec_at_avx2"]["decode_s"]) == {"float32"}
        assert "torch on AVX2 alone and avx2 kernels (an AVX2-only CPU): float32" in printed
    assert ("http_as_avx2_only" in report) == ("avx512f" in cpu_flags())
    assert ("http_as_avxvnni" in report) == ({"avx512f", "avx_vnni"} <= cpu_flags())
    for key, kernels, cpu_class in (
        ("http_as_avx2_only", "avx2", "an AVX2-only CPU"),
        ("http_as_avxvnni", "avxvnni", "an AVX-VNNI CPU without AVX-512"),
    ):
        for precision, http in report.get(key, {}).items():
            assert (http["kernels"], http["audio_decoder_dtype"]) == (kernels, "float32")
            assert http["warm_request_s"] > 0
            held = f"as {cpu_class} ({kernels} kernels, EnCodec in float32"
            assert f"{precision}, HTTP POST /generate/ 1 s {held}" in printed
    for http in report["http"].values():
        assert http["kernels"] == best_kernels.variant.name
        assert http["audio_decoder_dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")
    products = report["products"]
    assert products["rows"] == [2, 8]
    for precision in ("int8", "int4"):
        rates = products["gb_per_s"][precision]
        assert list(rates) == [variant.name for variant in RUNNABLE]
        assert all(rate > 0 for by_rows in rates.values() for rate in by_rows.values())
    assert "Products from the caches, GB/s of weights with 2 and 8 rows" in printed
    for held_to_avx2 in ("avx2", "avxvnni"):
        if held_to_avx2 in builds:
            assert builds[held_to_avx2]["torch_isa"] == "AVX2"
            assert f"int8, NATIVE_KERNELS={held_to_avx2} (torch on AVX2):" in printed
    for figures in builds.values():
        ratio = figures["ms_per_step"] / figures["floor_ms_per_step"]
        assert f"{ratio:.2f}x the floor (target <= 1.5x;" in printed
    assert report["machine"]["cpu"]
    assert "EnCodec decode of 1 s as served (best of 3): float32" in printed
    assert "ms per decode step" in printed
    assert "real-time factor" in printed
    assert "memory-bound floor" in printed
    assert "ours (int4" in printed
    assert "int8, NATIVE_KERNELS=plain:" in printed
    assert "int4 vs fp32 next-token KL" in printed
    assert "from a plain directory: first start (bakes)" in printed
    assert "int8, 4 takes of 1 s in one batch:" in printed
    assert "int8, a 35 s clip (windows of 30 s):" in printed
    assert "-token one, 1 s clip:" in printed


def test_smoke_load_benchmark_reports_latencies_and_no_errors_at_each_pace(
    tmp_path: Path, benchmark_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "load.json"
    result = load.main(
        [
            *("--smoke", "--clients", "20", "--seconds", "2", "--paces", "5", "closed", "--clip-seconds", "5"),
            *("--cache-dir", str(benchmark_cache), "--out", str(out)),
        ]
    )
    assert json.loads(out.read_text()) == result
    assert result["listed_files"] == 3
    assert [phase["pace"] for phase in result["phases"]] == ["5", "closed"]
    paced, closed = result["phases"]
    for phase in result["phases"]:
        assert phase["errors"] == []
        for route in ("/", "/files/"):
            figures = phase["routes"][route]
            assert figures["requests"] > 0
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    # Paced clients send no more than their schedule: 20 clients, 5 requests/s each, for 2 s.
    assert sum(figures["requests"] for figures in paced["routes"].values()) <= 20 * 5 * 2
    assert closed["requests_per_second"] > 0
    printed = capsys.readouterr().out
    assert "Load: 20 clients for 2 s at each pace while a generation runs; CPU" in printed
    assert "5 request/s per client:" in printed
    assert "closed loop (no pause):" in printed
    assert "GET /: p50" in printed
    assert "errors: 0" in printed


def test_short_fuzz_run_finds_nothing_holds_the_cap_and_touches_nothing_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = fuzz.main(["--max-examples", "3", "--min-requests", "0", "--out", str(tmp_path / "fuzz.json")])
    assert result["completed"]
    assert result["requests"] > 100
    assert result["failures"] == []
    assert result["server_errors"] == 0
    assert result["files_at_rest"] <= result["max_files"]
    assert result["outside_untouched"]
    assert f"Fuzz: {result['requests']} requests (seeds 16-16), 0 failures, 0 server errors" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("before", "after", "one_mode"),
    [(35.0, 36.0, True), (65.0, 55.0, True), (35.0, 65.0, False), (64.0, 36.0, False)],
)
def test_a_build_is_measured_in_one_mode_when_the_bandwidth_before_and_after_agree(
    before: float, after: float, one_mode: bool
) -> None:
    assert in_one_mode({"stream_gbs_before": before, "stream_gbs": after}) is one_mode
