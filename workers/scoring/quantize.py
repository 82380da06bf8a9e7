"""INT8 versions of a model for the CPU (onnxruntime quantization), accepted only when they
score close enough to the FP32 version on the same requests.

Two modes: ``dynamic`` (int8 weights and embedding tables, activations quantized per batch
at run time) and ``static`` (activation ranges calibrated beforehand on traffic fed through
the feature pipeline). The accuracy report compares the candidate with FP32 on the same
requests: |Δscore| (max, p99), top-K overlap per request, and AUC against labels drawn from
the FP32 model's own probabilities (Bernoulli, fixed seed), so no external data is needed.
A candidate that misses a bound is never written into the repository.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from schemas.messages import ScoreRequest
from workers.aggregation.ranking import rank
from workers.features.spec import FeaturePipeline
from workers.scoring.backends.onnx_cpu import session_options
from workers.scoring.inputs import InputBinding
from workers.scoring.quantize_bounds import MODES, Bounds
from workers.scoring.repository import MODEL_FILE, ModelRepositoryError, ModelSpec, list_versions

REPORT_FILE = "quantization.json"
STATIC_OPS = ("Gemm", "MatMul", "Relu", "Concat", "Gather")  # per-channel int8 weights
"""Quantized in static mode; the Sigmoid stays float so CTRs keep their resolution."""


class QuantizationRefused(ValueError):
    """The quantized candidate missed an accuracy bound; nothing was written."""


@dataclass(frozen=True)
class Traffic:
    """Model inputs of a set of requests: rows concatenated, ``offsets`` delimit requests."""

    dense: np.ndarray
    sparse: np.ndarray
    ad_id: np.ndarray
    bid: np.ndarray
    offsets: np.ndarray  # [requests + 1]
    top_k: np.ndarray  # [requests]

    @classmethod
    def from_requests(cls, requests: Sequence[ScoreRequest],
                      features: FeaturePipeline) -> Traffic:
        if not requests:
            raise ValueError("no requests to calibrate or compare on")
        dense, sparse = features.batch(requests)
        counts = [r.n_candidates for r in requests]
        return cls(dense, sparse,
                   np.concatenate([r.candidates["ad_id"] for r in requests]).astype(np.int64),
                   np.concatenate([r.candidates["bid"] for r in requests]).astype(np.float32),
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   np.array([r.top_k for r in requests], dtype=np.int64))

    @property
    def rows(self) -> int:
        return int(self.dense.shape[0])

    def batches(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo in range(0, self.rows, rows):
            yield self.dense[lo:lo + rows], self.sparse[lo:lo + rows]


@dataclass(frozen=True)
class AccuracyReport:
    """An INT8 candidate against FP32 on the same requests."""

    mode: str
    from_version: int
    requests: int
    rows: int
    max_abs_delta: float
    p99_abs_delta: float
    top_k_overlap: float  # mean over requests of |top-K(fp32) ∩ top-K(int8)| / K
    auc_fp32: float
    auc_int8: float
    fp32_rows_per_s: float
    int8_rows_per_s: float

    @property
    def speedup(self) -> float:
        return self.int8_rows_per_s / self.fp32_rows_per_s

    def misses(self, bounds: Bounds) -> list[str]:
        """Each bound this report misses, as 'what: value (bound)'."""
        out = []
        if self.max_abs_delta > bounds.max_abs_delta:
            out.append(f"max |Δscore| {self.max_abs_delta:.4g} > {bounds.max_abs_delta:g}")
        if self.p99_abs_delta > bounds.p99_abs_delta:
            out.append(f"p99 |Δscore| {self.p99_abs_delta:.4g} > {bounds.p99_abs_delta:g}")
        if self.top_k_overlap < bounds.min_top_k_overlap:
            out.append(f"top-K overlap {self.top_k_overlap:.4f} < {bounds.min_top_k_overlap:g}")
        if self.auc_fp32 - self.auc_int8 > bounds.max_auc_drop:
            out.append(f"AUC drop {self.auc_fp32 - self.auc_int8:.4g} > "
                       f"{bounds.max_auc_drop:g}")
        return out

    def lines(self) -> list[str]:
        return [
            (f"{self.mode} INT8 from version {self.from_version}: {self.requests} requests, "
            f"{self.rows} rows"),
            f"  |Δscore| vs FP32: max {self.max_abs_delta:.5f}, p99 {self.p99_abs_delta:.5f}",
            f"  top-K overlap: {self.top_k_overlap:.4f}",
            (f"  AUC (labels ~ Bernoulli(FP32 score)): FP32 {self.auc_fp32:.4f}, "
            f"INT8 {self.auc_int8:.4f}"),
            (f"  rows/s (1 thread, same batches): FP32 {self.fp32_rows_per_s:,.0f}, "
            f"INT8 {self.int8_rows_per_s:,.0f}, INT8 ÷ FP32 = {self.speedup:.2f}"),
        ]


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Gemm(A, B, C)`` with a constant B as ``MatMul`` + ``Add`` (dynamic quantization
    covers MatMul, not Gemm); the scores are unchanged."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(weight)
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), weight.name))
        product = f"{node.output[0]}__matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]],
                                      [product if len(node.input) > 2 else node.output[0]],
                                      name=f"{node.name}__matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name}__bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


class _Calibration:
    """onnxruntime's CalibrationDataReader over traffic: the model's own feeds per batch."""

    def __init__(self, traffic: Traffic, binding: InputBinding, rows: int) -> None:
        self._batches = (binding.feeds(d, s) for d, s in traffic.batches(rows))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_file(fp32: ModelSpec, out: Path, mode: str, calibration: Traffic | None) -> None:
    """Writes the INT8 model of ``fp32`` to ``out`` (static mode calibrates on traffic)."""
    if mode not in MODES:
        raise ValueError(f"quantization mode must be one of {', '.join(MODES)}, got {mode!r}")
    root = logging.getLogger()  # onnxruntime's quantizer logs advice on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        _quantize(fp32, out, mode, calibration)
    finally:
        root.setLevel(level)


def _quantize(fp32: ModelSpec, out: Path, mode: str, calibration: Traffic | None) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        if mode == "dynamic":
            src = Path(tmp) / "matmul.onnx"
            onnx.save(gemm_as_matmul(onnx.load(str(fp32.path))), str(src))
            quantize_dynamic(src, out, weight_type=QuantType.QInt8)
            return
        if calibration is None:
            raise ValueError("static quantization needs calibration traffic")

        class Reader(_Calibration, CalibrationDataReader):  # type: ignore[misc]
            pass

        quantize_static(fp32.path, out, Reader(calibration, InputBinding(fp32.config), 512),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=list(STATIC_OPS))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[labels.astype(bool)].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])


def _score_all(session: ort.InferenceSession, binding: InputBinding, output: str,
               traffic: Traffic, rows: int) -> tuple[np.ndarray, float]:
    """Scores of every row in batches of ``rows``, and the seconds the model took."""
    out, spent = [], 0.0
    for dense, sparse in traffic.batches(rows):
        feeds = binding.feeds(dense, sparse)
        start = time.perf_counter()
        (y,) = session.run([output], feeds)
        spent += time.perf_counter() - start
        out.append(np.asarray(y, dtype=np.float32).reshape(-1))
    return np.concatenate(out), spent


def compare(fp32: ModelSpec, candidate: Path, traffic: Traffic, mode: str, *,
            seed: int = 0, batch_rows: int = 1024, repeats: int = 3) -> AccuracyReport:
    """The accuracy (and speed) of ``candidate`` against ``fp32`` on the same traffic.

    Speed: both sessions with one thread score the same batches, alternating, ``repeats``
    times each; the fastest pass of each counts."""
    binding, output = InputBinding(fp32.config), fp32.config.output_name
    ref, cand = _session(fp32.path), _session(candidate)
    fp32_s, int8_s = [], []
    for _ in range(repeats):
        s0, t0 = _score_all(ref, binding, output, traffic, batch_rows)
        s1, t1 = _score_all(cand, binding, output, traffic, batch_rows)
        fp32_s.append(t0)
        int8_s.append(t1)
    delta = np.abs(s1.astype(np.float64) - s0)
    labels = np.random.default_rng(seed).random(len(s0)) < s0
    overlaps = []
    for i in range(len(traffic.top_k)):
        lo, hi = int(traffic.offsets[i]), int(traffic.offsets[i + 1])
        k = min(int(traffic.top_k[i]), hi - lo)
        ad, bid = traffic.ad_id[lo:hi], traffic.bid[lo:hi]
        a = set(ad[rank(ad, bid, s0[lo:hi], k)].tolist())
        b = set(ad[rank(ad, bid, s1[lo:hi], k)].tolist())
        overlaps.append(len(a & b) / k)
    return AccuracyReport(
        mode=mode, from_version=fp32.version, requests=len(traffic.top_k), rows=traffic.rows,
        max_abs_delta=float(delta.max()), p99_abs_delta=float(np.quantile(delta, 0.99)),
        top_k_overlap=float(np.mean(overlaps)), auc_fp32=auc(s0, labels),
        auc_int8=auc(s1, labels), fp32_rows_per_s=traffic.rows / min(fp32_s),
        int8_rows_per_s=traffic.rows / min(int8_s))


def install(fp32: ModelSpec, candidate: Path, report: AccuracyReport, bounds: Bounds,
            version: int | None = None) -> Path:
    """Moves an accepted candidate into ``<repo>/<name>/<version>/`` (default: the next
    free version) with its report beside it; raises QuantizationRefused if it misses a
    bound, leaving the repository untouched."""
    misses = report.misses(bounds)
    if misses:
        raise QuantizationRefused(
            f"{fp32.name}: the {report.mode} INT8 version of version {fp32.version} is "
            f"refused: {'; '.join(misses)}")
    model_dir = fp32.path.parent.parent
    present = list_versions(model_dir.parent, fp32.name)
    version = version or max(present) + 1
    target = model_dir / str(version)
    if (target / MODEL_FILE).exists():
        raise ModelRepositoryError(f"{target / MODEL_FILE}: version {version} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(candidate, staging / MODEL_FILE)
        record = {**asdict(report), "bounds": asdict(bounds), "speedup": report.speedup}
        (staging / REPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staging, target)  # the version appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / MODEL_FILE
