"""Backends on CPU: onnxruntime scoring, backend selection and fallback, and the CuPy graph
compiler (pure Python) executed with NumPy against onnxruntime."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from workers.scoring.backends import (
    BackendUnavailableError,
    ScoringBackend,
    UnsupportedModelError,
    create_backend,
    cuda_available,
)
from workers.scoring.backends.graph_plan import AffineStep, ConcatStep, compile_model, compile_plan
from workers.scoring.backends.onnx_cpu import OnnxCpuBackend
from workers.scoring.backends.plan_exec import (
    FP16_MAX_ABS_ERROR,
    FP32_MAX_ABS_ERROR,
    run_plan_numpy,
)
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import ModelSpec, load_model


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    repo = tmp_path_factory.mktemp("models")
    build_reference_model(repo)
    return load_model(repo, "ctr")


def _rows(spec: ModelSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, 13), dtype=np.float32)
    buckets = np.asarray(spec.config.sparse_buckets)
    return dense, rng.integers(0, buckets, size=(n, 26), dtype=np.int64)


def _ort(path: Path | bytes, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"dense": dense, "sparse": sparse})[0].reshape(-1)


# -- onnxruntime backend ----------------------------------------------------------------------
def test_onnx_backend_scores_like_a_plain_session(spec: ModelSpec) -> None:
    backend = create_backend(spec)
    assert isinstance(backend, OnnxCpuBackend) and isinstance(backend, ScoringBackend)
    backend.warmup()
    dense, sparse = _rows(spec, 500)
    scores = backend.score(dense, sparse)
    assert scores.shape == (500,) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, _ort(spec.path, dense, sparse))
    assert backend.score(dense[:0], sparse[:0]).shape == (0,)
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.score(dense, sparse)


@pytest.mark.parametrize(
    ("dense", "sparse", "message"),
    [
        (np.zeros((2, 13), np.float64), np.zeros((2, 26), np.int64), "dense must be a float32"),
        (np.zeros((2, 13), np.float32), np.zeros((2, 26), np.int32), "sparse must be an int64"),
        (np.zeros((2, 12), np.float32), np.zeros((2, 26), np.int64), r"shape \[N, 13\]"),
        (np.zeros((2, 13), np.float32), np.zeros((3, 26), np.int64), "2 rows but sparse has 3"),
    ],
)
def test_bad_batches_are_refused(spec, dense, sparse, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_backend(spec).score(dense, sparse)


def test_instances_score_concurrently_in_threads(spec: ModelSpec) -> None:
    backends = [create_backend(spec, intra_op_threads=1) for _ in range(4)]
    dense, sparse = _rows(spec, 2048, seed=1)
    expected = _ort(spec.path, dense, sparse)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = backends[i].score(dense, sparse)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(results[i], expected, atol=1e-6)


def test_backend_selection_errors(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        create_backend(spec, "tensorrt")
    with pytest.raises(ValueError, match=r"unknown backend option\(s\) \['threads'\]"):
        create_backend(spec, threads=2)
    # cupy-only options are ignored by onnxruntime (a config may name both)
    assert create_backend(spec, dtype="float16").name == "onnxruntime"


def test_cupy_without_cuda_is_a_clear_error(spec: ModelSpec) -> None:
    ok, reason = cuda_available()
    if ok:
        pytest.skip("CUDA is available here")
    assert reason
    with pytest.raises(BackendUnavailableError, match="CUDA is unavailable"):
        create_backend(spec, "cupy")


def test_importing_backends_does_not_import_cupy() -> None:
    code = "import sys, workers.scoring.backends, workers.scoring.backends.graph_plan; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unsupported_operator_falls_back_with_a_warning(spec, tmp_path, caplog) -> None:
    build_reference_model(tmp_path)
    model = onnx.load(str(tmp_path / "ctr" / "1" / "model.onnx"))
    (node,) = [n for n in model.graph.node if n.name == "bottom_fc0_relu"]
    node.op_type = "Tanh"
    onnx.save(model, str(tmp_path / "ctr" / "1" / "model.onnx"))
    tanh_spec = load_model(tmp_path, "ctr")
    with caplog.at_level(logging.WARNING, logger="adstream.workers.backends"):
        backend = create_backend(tanh_spec, "cupy", dtype="float16", intra_op_threads=2)
    assert backend.name == "onnxruntime"
    assert "'Tanh'" in caplog.text and "bottom_fc0_relu" in caplog.text
    assert "falling back to onnxruntime" in caplog.text
    dense, sparse = _rows(spec, 64)
    np.testing.assert_array_equal(backend.score(dense, sparse), _ort(tanh_spec.path, dense, sparse))


# -- the CuPy graph compiler, run with NumPy --------------------------------------------------
def test_reference_model_compiles_to_one_fused_gather(spec: ModelSpec) -> None:
    plan = compile_plan(spec.path)
    concats = [s for s in plan.steps if isinstance(s, ConcatStep)]
    affine = [s for s in plan.steps if isinstance(s, AffineStep)]
    assert len(plan.steps) == 6 and len(concats) == 1 and len(affine) == 5
    (concat,) = concats
    assert [f.sparse_column for f in concat.fields] == list(range(26))
    assert [f.out_column for f in concat.fields] == list(range(16, 432, 16))
    assert [f.buckets for f in concat.fields] == list(spec.config.sparse_buckets)
    assert concat.copies == (("bottom_fc1_relu", 0, 16),)
    assert [s.activation for s in affine] == ["relu"] * 4 + ["sigmoid"]
    assert all(s.weight and s.bias for s in affine)
    assert plan.table.shape == (sum(spec.config.sparse_buckets), 16)


@pytest.mark.parametrize("rows", [1, 777, 3001])
def test_plan_matches_onnxruntime_fp32(spec: ModelSpec, rows: int) -> None:
    plan = compile_plan(spec.path)
    dense, sparse = _rows(spec, rows, seed=rows)
    scores, clamped = run_plan_numpy(plan, dense, sparse)
    assert clamped == 0
    assert np.max(np.abs(scores - _ort(spec.path, dense, sparse))) <= FP32_MAX_ABS_ERROR


def test_plan_fp16_emulation_is_within_the_stated_bound(spec: ModelSpec) -> None:
    plan = compile_plan(spec.path)
    dense, sparse = _rows(spec, 10_000, seed=5)
    scores, _ = run_plan_numpy(plan, dense, sparse, "float16")
    assert np.max(np.abs(scores - _ort(spec.path, dense, sparse))) <= FP16_MAX_ABS_ERROR / 2


def test_out_of_range_ids_are_clamped_and_counted(spec: ModelSpec) -> None:
    plan = compile_plan(spec.path)
    dense, sparse = _rows(spec, 10, seed=9)
    buckets = np.asarray(spec.config.sparse_buckets)
    bad, clean = sparse.copy(), sparse.copy()
    bad[:4, 0], clean[:4, 0] = buckets[0] + 3, buckets[0] - 1
    bad[:, 2], clean[:, 2] = -1, buckets[2] - 1  # negative ids wrap, as in ONNX Gather
    scores, clamped = run_plan_numpy(plan, dense, bad)
    assert clamped == 4
    np.testing.assert_allclose(scores, _ort(spec.path, dense, clean), atol=FP32_MAX_ABS_ERROR)


def _tiny(nodes, inits, output_dims=("N",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("sparse", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(output_dims))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _tiny_inits(rng: np.random.Generator) -> dict[str, np.ndarray]:
    f32 = np.float32
    return {
        "c0": np.array(0, np.int64),
        "c1": np.array(1, np.int64),
        "t0": rng.standard_normal((5, 3)).astype(f32),
        "t1": rng.standard_normal((7, 3)).astype(f32),
        "w": rng.standard_normal((4, 6)).astype(f32),
        "b": rng.standard_normal(6).astype(f32),
        "g": rng.standard_normal((8, 12)).astype(f32),
        "gc": rng.standard_normal((1, 8)).astype(f32),
        "axes": np.array([2], np.int64),
        "shape": np.array([-1, 8], np.int64),
        "w2": rng.standard_normal((8, 1)).astype(f32),
        "flat": np.array([-1], np.int64),
    }


def test_generic_operators_compile_and_match_onnxruntime() -> None:
    """MatMul+Add+Relu, Gemm(alpha, beta, transB), Unsqueeze/Flatten/Reshape, Add of two
    activations and a [N] output all run like onnxruntime."""
    mk = helper.make_node
    nodes = [
        mk("Gather", ["sparse", "c0"], ["i0"], axis=1),
        mk("Gather", ["sparse", "c1"], ["i1"], axis=1),
        mk("Gather", ["t0", "i0"], ["e0"], axis=0),
        mk("Gather", ["t1", "i1"], ["e1"], axis=0),
        mk("MatMul", ["dense", "w"], ["m"]),
        mk("Add", ["b", "m"], ["mb"]),
        mk("Relu", ["mb"], ["h"]),
        mk("Concat", ["e0", "h", "e1"], ["x"], axis=1),
        mk("Gemm", ["x", "g", "gc"], ["y"], transB=1, alpha=0.5, beta=2.0),
        mk("Unsqueeze", ["y", "axes"], ["y3"]),
        mk("Flatten", ["y3"], ["yf"], axis=1),
        mk("Add", ["yf", "y"], ["s"]),
        mk("Reshape", ["s", "shape"], ["r"]),
        mk("Gemm", ["r", "w2"], ["z"]),
        mk("Sigmoid", ["z"], ["p"]),
        mk("Reshape", ["p", "flat"], ["out"]),
    ]
    rng = np.random.default_rng(0)
    model = _tiny(nodes, _tiny_inits(rng))
    plan = compile_model(model)
    assert [type(s).__name__ for s in plan.steps] == [
        "AffineStep",
        "ConcatStep",
        "AffineStep",
        "AddStep",
        "AffineStep",
    ]
    first, last = plan.steps[0], plan.steps[-1]
    assert isinstance(first, AffineStep) and isinstance(last, AffineStep)
    assert first.activation == "relu" and last.activation == "sigmoid"
    dense = rng.standard_normal((33, 4)).astype(np.float32)
    sparse = np.stack([rng.integers(0, 5, 33), rng.integers(0, 7, 33)], 1).astype(np.int64)
    expected = _ort(model.SerializeToString(), dense, sparse)
    scores, _ = run_plan_numpy(plan, dense, sparse)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("node", "op", "message"),
    [
        (helper.make_node("Tanh", ["dense"], ["out"], name="t"), "Tanh", "operator 'Tanh'"),
        (
            helper.make_node("Relu", ["e0"], ["out"], name="r"),
            "Relu",
            "fuses embedding lookups only into a Concat",
        ),
        (
            helper.make_node("Gather", ["dense", "c0"], ["out"], name="g", axis=1),
            "Gather",
            "only embedding lookups are supported",
        ),
        (
            helper.make_node("Gemm", ["dense", "w"], ["out"], name="gm", transA=1),
            "Gemm",
            "transA=1 is not supported",
        ),
        (
            helper.make_node("MatMul", ["dense", "dense"], ["out"], name="mm"),
            "MatMul",
            "must be an initializer",
        ),
    ],
)
def test_unsupported_graphs_name_the_operator_and_node(node, op: str, message: str) -> None:
    head = [
        helper.make_node("Gather", ["sparse", "c0"], ["i0"], axis=1),
        helper.make_node("Gather", ["t0", "i0"], ["e0"], axis=0),
    ]
    model = _tiny([*head, node], _tiny_inits(np.random.default_rng(0)), output_dims=())
    with pytest.raises(UnsupportedModelError, match=message) as info:
        compile_model(model)
    assert info.value.op_type == op and info.value.node == node.name
    assert repr(node.name) in str(info.value)


def test_onnxruntime_cuda_backend_refuses_clearly_without_the_cuda_provider(tmp_path) -> None:
    import onnxruntime as ort

    from workers.scoring.backends import BackendUnavailableError, create_backend
    from workers.scoring.reference_model import build_reference_model
    from workers.scoring.repository import load_model

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the refusal cannot be shown")
    build_reference_model(tmp_path)
    with pytest.raises(BackendUnavailableError, match="install onnxruntime-gpu"):
        create_backend(load_model(tmp_path, "ctr"), "onnxruntime-cuda")
