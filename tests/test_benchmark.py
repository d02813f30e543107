"""The speed benchmark's smoke run: every measurement runs and reports sane figures."""

import json
from pathlib import Path

import pytest

from benchmarks.speed import main


def test_smoke_benchmark_measures_baseline_engine_http_and_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "speed.json"
    main(["--smoke", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    report = json.loads(out.read_text())
    for side in ("baseline", "engine"):
        assert report[side]["ms_per_step"] > 0
        assert report[side]["wall_s"] > 0
        assert report[side]["ready_s"] > 0
        assert report[side]["peak_rss_mb"] > 0
    assert report["engine"]["precision"] == "int8"
    assert report["engine"]["kernels"] in {"avx512vnni", "avx2", "armv8", "generic"}
    assert report["engine"]["warm_ms_per_step"] > 0
    assert report["engine"]["warm_wall_s"] > 0
    assert report["http"]["warm_request_s"] > 0
    assert len(report["quality"]["kl_per_codebook"]) == 4
    assert all(0 <= overlap <= 1 for overlap in report["quality"]["top250_overlap_per_codebook"])
    printed = capsys.readouterr().out
    assert "ms per decode step" in printed
    assert "real-time factor" in printed
    assert "warm" in printed
