"""INT8 versions on the CPU: written beside FP32 when close enough, refused otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from loadtest.generate import generate
from schemas.json_form import request_from_json
from workers.roles import feature_pipeline
from workers.scoring.backends import create_backend
from workers.scoring.quantize import (
    REPORT_FILE,
    Bounds,
    QuantizationRefused,
    Traffic,
    auc,
    compare,
    gemm_as_matmul,
    install,
    quantize_file,
)
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import list_versions, load_model
from workers.settings import Settings


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qrepo")
    build_reference_model(path)
    return path


@pytest.fixture(scope="module")
def traffic(repo: Path) -> Traffic:
    spec = load_model(repo, "ctr", 1)
    reqs = [request_from_json(d, 0) for d in generate(120, seed=4, candidates="uniform:20,120")]
    return Traffic.from_requests(reqs, feature_pipeline(Settings(), spec))


def test_auc_matches_counting_pairs() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # ties on purpose
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_gemm_as_matmul_keeps_the_scores(repo: Path, traffic: Traffic, tmp_path: Path) -> None:
    spec = load_model(repo, "ctr", 1)
    rewritten = gemm_as_matmul(onnx.load(str(spec.path)))
    assert not [n for n in rewritten.graph.node if n.op_type == "Gemm"]
    onnx.save(rewritten, str(tmp_path / "m.onnx"))
    report = compare(spec, tmp_path / "m.onnx", traffic, "none", repeats=1)
    assert report.max_abs_delta < 1e-5 and report.top_k_overlap == 1.0


def test_dynamic_int8_is_reported_and_written_beside_fp32(repo: Path, traffic: Traffic,
                                                          tmp_path: Path) -> None:
    spec = load_model(repo, "ctr", 1)
    candidate = tmp_path / "int8.onnx"
    quantize_file(spec, candidate, "dynamic", None)
    ops = {n.op_type for n in onnx.load(str(candidate)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    report = compare(spec, candidate, traffic, "dynamic", repeats=1)
    assert report.rows == traffic.rows and report.requests == 120
    assert 0 < report.p99_abs_delta <= report.max_abs_delta < 0.25
    assert 0.9 <= report.top_k_overlap <= 1 and 0.5 < report.auc_int8 < 1
    assert report.fp32_rows_per_s > 0 and report.int8_rows_per_s > 0
    path = install(spec, candidate, report, Bounds())
    assert path == repo / "ctr" / "2" / "model.onnx" and list_versions(repo, "ctr") == [1, 2]
    saved = json.loads((path.parent / REPORT_FILE).read_text())
    assert saved["from_version"] == 1 and saved["mode"] == "dynamic"
    int8 = load_model(repo, "ctr")  # the version policy (latest) now serves it
    assert int8.version == 2
    scores = create_backend(int8, "onnxruntime").score(traffic.dense[:500], traffic.sparse[:500])
    fp32 = create_backend(spec, "onnxruntime").score(traffic.dense[:500], traffic.sparse[:500])
    assert np.abs(scores - fp32).max() <= report.max_abs_delta + 1e-6


def test_a_broken_quantized_model_is_refused(repo: Path, traffic: Traffic,
                                             tmp_path: Path) -> None:
    spec = load_model(repo, "ctr", 1)
    candidate = tmp_path / "int8.onnx"
    quantize_file(spec, candidate, "dynamic", None)
    model = onnx.load(str(candidate))
    bias = next(t for t in model.graph.initializer if t.name == "top_fc2_bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.5, bias.name))
    onnx.save(model, str(candidate))  # every CTR shifted up: a wrong model, still runnable
    before = list_versions(repo, "ctr")
    report = compare(spec, candidate, traffic, "dynamic", repeats=1)
    with pytest.raises(QuantizationRefused, match=r"refused: max \|Δscore\| .* > 0.25; "
                                                  r"p99 \|Δscore\| .* > 0.1"):
        install(spec, candidate, report, Bounds())
    assert list_versions(repo, "ctr") == before
    assert not [p for p in (repo / "ctr").iterdir() if p.name.startswith(".")]


def test_static_int8_calibrates_on_traffic(repo: Path, traffic: Traffic, tmp_path: Path) -> None:
    spec = load_model(repo, "ctr", 1)
    candidate = tmp_path / "static.onnx"
    quantize_file(spec, candidate, "static", traffic)
    ops = [n.op_type for n in onnx.load(str(candidate)).graph.node]
    assert ops.count("QuantizeLinear") > 5 and "Sigmoid" in ops
    report = compare(spec, candidate, traffic, "static", repeats=1)
    assert report.top_k_overlap >= 0.9 and report.auc_fp32 - report.auc_int8 < 0.005


def test_the_command_refuses_a_version_that_misses_a_bound(tmp_path: Path) -> None:
    build_reference_model(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "model", "quantize", "--repo", str(tmp_path),
         "--requests", "60", "--p99-abs-delta", "0.0001"],
        check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "top-K overlap" in run.stdout and "INT8 ÷ FP32" in run.stdout
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "refused: p99 |Δscore|" in errors[0], run.stderr
    assert list_versions(tmp_path, "ctr") == [1]
