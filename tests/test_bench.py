"""``adstream bench``: its pieces on their own, and one whole run on the real broker."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench import recovery_time
from loadtest.plans import BenchPlan
from loadtest.model_limit import RowHistogram, limit, parse_row_histogram
from pipeline.metrics import Metrics
from workers.scoring.repository import load_model

pytestmark = pytest.mark.timeout(900)


def _metrics_text(sizes: list[int]) -> str:
    from prometheus_client import generate_latest

    m = Metrics()
    observe = m.batch_observer("ctr", "1")
    for rows in sizes:
        observe(rows, 0.001, [0.0])
    return generate_latest(m.registry).decode()


def test_the_batch_histogram_is_read_from_a_scrape_and_differenced() -> None:
    before = parse_row_histogram(_metrics_text([100] * 3))
    after = parse_row_histogram(_metrics_text([100] * 3 + [100] * 5 + [300] * 2 + [20000]))
    d = after.minus(before)
    assert d.batches == 8 and d.rows == 5 * 100 + 2 * 300 + 20000
    assert [(b["lo"], b["hi"], b["batches"]) for b in d.buckets()] == [
        (96.0, 128.0, 5), (256.0, 384.0, 2), (16384.0, math.inf, 1)]
    sizes = d.representative_sizes(max_rows=20000)
    # scaled so the sizes add up to the rows the histogram counted
    assert abs(sum(s * n for s, n in sizes) - d.rows) / d.rows < 0.01
    with pytest.raises(ValueError, match="adstream_batch_rows"):
        parse_row_histogram("# nothing here\n")


def test_the_limit_times_the_model_at_the_formed_sizes(model_repo: Path) -> None:
    spec = load_model(model_repo, "ctr")
    hist = RowHistogram((64.0, 128.0, 256.0), (0, 10, 0, 0), 1000.0)
    out = limit(spec, hist, 8192, seconds_per_size=0.05)
    assert out["threads"] == 1
    assert [s["rows"] for s in out["sizes"]] == [100]  # type: ignore[index]
    assert out["rows_per_s"] > 1000  # type: ignore[operator]


def test_recovery_is_when_p99_of_ok_is_back_under_the_bound() -> None:
    off = np.arange(0, 20, 0.01)
    lat = np.where(off < 13.5, 200.0, 10.0)  # slow until 3.5 s after an overload ending at 10
    ok = np.ones(len(off), bool)
    assert recovery_time(off, lat, ok, after_s=10, bound_ms=50, window_s=1) == 4.0
    # one good window alone is not a recovery
    lat[(off >= 11) & (off < 12)] = 10.0
    assert recovery_time(off, lat, ok, after_s=10, bound_ms=50, window_s=1) == 4.0
    # expired answers do not count against the p99 of ok ones
    lat = np.where(off < 13.5, 200.0, 10.0)
    lat[::3] = 10.0
    assert recovery_time(off, lat, lat < 100, after_s=10, bound_ms=50, window_s=1) == 0.0
    assert recovery_time(off, np.full(len(off), 99.0), ok, after_s=10, bound_ms=50,
                         window_s=1) is None


def test_bad_plans_are_refused_with_the_flag_named() -> None:
    with pytest.raises(ValueError, match="--steady-fraction"):
        BenchPlan(steady_fraction=1.5)
    with pytest.raises(ValueError, match="--warmup"):
        BenchPlan(step_s=2, warmup_s=3)
    with pytest.raises(ValueError, match="--batch-ms"):
        BenchPlan(batch_ms=-2)
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "--candidates", "0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "--candidates must be ≥ 1" in out.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_measures_limit_pipeline_and_survives_5x_overload(
        kafka_bootstrap: str, model_repo: Path, tmp_path: Path) -> None:
    """One short ``adstream bench`` on the real broker with worker processes, including 60 s
    at 5x the found rate: memory stays flat and every request is answered ok or expired."""
    out = tmp_path / "BENCH.json"
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "--bootstrap", kafka_bootstrap,
           "--set", f"scorer.model_repo={model_repo}", "--step-s", "4", "--warmup", "1",
           "--start-rate", "12", "--slo-p99-ms", "200", "--max-steps", "6", "--precision", "0.25", "--warm-s", "15",
           "--steady-s", "6", "--overload-s", "60", "--recovery-s", "15", "--limit-s", "0.2",
           "--requests", "500", "--progress", "off", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=800, check=False,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(run.stdout)
    print(run.stderr[-5000:], file=sys.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["kind"] == "adstream.bench"
    p, lim = doc["pipeline"], doc["limit"]
    # some rate met the bound. How high depends on the machine: at p99 <= 50 ms, 62/s, 38/s,
    # 19/s and none were found on one 2-core VM in one day (its host took up to a fifth of
    # its CPU at times), so this run's bound is loose; the deadlines stay the bench's 100 ms
    # (the overload's memory check relies on late requests being shed early)
    assert p["rate"] > 0 and p["p99_ms"] <= 200
    assert lim["rows_per_s"] > 0 and lim["threads"] == 1
    assert doc["ratio"] == pytest.approx(p["candidates_per_s"] / lim["rows_per_s"], rel=1e-3)
    assert p["batch_rows"]["batches"] > 0 and p["batch_rows"]["buckets"]
    for stage in ("features", "scorer", "aggregator", "broker", "load generator"):
        assert p["cpu_ms_per_request"][stage] > 0, stage
    steady = doc["steady"]
    assert steady["rate"] == pytest.approx(0.6 * p["rate"], rel=1e-3)
    assert steady["p50_ms"] is not None and steady["p99_ms"] is not None
    ov = doc["overload"]
    assert ov["sent_rate"] >= 0.8 * ov["offered_rate"], "the generator did not offer 5x"
    assert ov["answered_ok_or_expired"], ov["outcomes"]
    assert ov["outcomes"]["expired"] > 0  # it was overloaded: work was shed, not queued
    for role, growth in ov["rss_growth"].items():
        assert growth is not None and growth <= 1.5, (role, ov["rss_growth"])
    assert ov["recovered_after_s"] is not None  # p99 of ok came back under the bound
    assert "limit     raw onnxruntime" in run.stdout and "targets:" in run.stdout
