"""GPU checks of the CuPy backend (parity, sharing, backpressure, CUDA graphs).

Used by ``tests/test_gpu.py`` and runnable without pytest on a GPU machine:
``python -m loadtest.gpu_selftest`` (exit status 1 if a check fails).
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import sys
import tempfile
import threading
import time
import traceback
from typing import Any
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.random_rows import random_rows
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import ModelSpec, load_model

PARITY_ROWS = 10_000
ODD_BATCH_SIZES = (1, 777, 3001)
SHARING_INSTANCES = 4


@dataclass
class CheckResult:
    """Outcome of one check: PASS, WARN (works, with a caveat) or FAIL."""

    name: str
    status: str
    detail: str
    seconds: float


def reference_scores(spec: ModelSpec, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """onnxruntime CPU scores (the parity baseline)."""
    from workers.scoring.backends.onnx_cpu import OnnxCpuBackend

    backend = OnnxCpuBackend(spec, intra_op_threads=os.cpu_count() or 1)
    try:
        return backend.score(dense, sparse)
    finally:
        backend.close()


def build_spec(repo_dir: Path) -> ModelSpec:
    """Builds the reference model into ``repo_dir`` and loads it."""
    build_reference_model(repo_dir)
    return load_model(repo_dir, "ctr")


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def check_parity(spec: ModelSpec, dtype: str = "float32", cuda_graphs: bool = False) -> str:
    """CuPy vs onnxruntime CPU on 10,000 rows, whole and in preferred and odd batch sizes."""
    from workers.scoring.backends.cupy_graph import (
        FP16_MAX_ABS_ERROR,
        FP32_MAX_ABS_ERROR,
        CupyBackend,
    )

    tol = FP32_MAX_ABS_ERROR if dtype == "float32" else FP16_MAX_ABS_ERROR
    dense, sparse = random_rows(spec.config, PARITY_ROWS, seed=1)
    ref = reference_scores(spec, dense, sparse)
    backend = CupyBackend(spec, dtype=dtype, cuda_graphs=cuda_graphs)
    try:
        diffs = {"all": _max_diff(backend.score(dense, sparse), ref)}
        for size in ODD_BATCH_SIZES + spec.config.preferred_batch_rows:
            n = min(PARITY_ROWS, 500 * size)
            got = np.concatenate(
                [
                    backend.score(dense[i : i + size], sparse[i : i + size])
                    for i in range(0, n, size)
                ]
            )
            diffs[str(size)] = _max_diff(got, ref[:n])
        stats = backend.stats
    finally:
        backend.close()
    worst = max(diffs.values())
    detail = (
        f"{dtype} graphs={cuda_graphs}: max|cupy-ort| {worst:.2e} (bound {tol:.0e}); per batch "
        + ", ".join(f"{k}:{v:.1e}" for k, v in diffs.items())
    )
    if cuda_graphs:
        detail += f"; graphs captured for {stats.graph_sizes}, failures {stats.graph_failures}"
    assert worst <= tol, detail
    return detail


def check_cuda_graphs_captured(spec: ModelSpec) -> str:
    """Every preferred size captures a CUDA graph that replays without device allocations."""
    from workers.scoring.backends.cupy_graph import CupyBackend

    backend = CupyBackend(spec, cuda_graphs=True)
    try:
        backend.warmup()
        stats = backend.stats
    finally:
        backend.close()
    detail = f"captured {stats.graph_sizes}; failures {stats.graph_failures}"
    assert not stats.graph_failures and stats.graph_sizes, detail
    return detail


def check_out_of_range_ids(spec: ModelSpec) -> str:
    """Ids beyond a table are clamped (and counted); negative ids wrap like ONNX Gather."""
    from workers.scoring.backends.cupy_graph import FP32_MAX_ABS_ERROR, CupyBackend

    dense, sparse = random_rows(spec.config, 1000, seed=2)
    buckets = np.asarray(spec.config.sparse_buckets, dtype=np.int64)
    bad = sparse.copy()
    bad[::3, 0] = buckets[0] + 7  # clamped to the last row
    bad[1::3, 5] = -1  # wraps to the last row (ONNX semantics), not counted
    clean = sparse.copy()
    clean[::3, 0] = buckets[0] - 1
    clean[1::3, 5] = buckets[5] - 1
    ref = reference_scores(spec, dense, clean)
    backend = CupyBackend(spec)
    try:
        got = backend.score(dense, bad)
        clamped = backend.stats.clamped_ids
    finally:
        backend.close()
    expected = len(range(0, 1000, 3))
    detail = f"max diff {_max_diff(got, ref):.1e}, clamped {clamped} (expected {expected})"
    assert _max_diff(got, ref) <= FP32_MAX_ABS_ERROR and clamped == expected, detail
    return detail


def _serve_queue(
    backends: list[Any], work: queue.Queue[Any], results: dict[int, Any], errors: list[str],
    counts: list[int],
) -> list[threading.Thread]:
    """Starts one thread per backend, each scoring batches from ``work`` until a None."""

    def serve(i: int) -> None:
        backend = backends[i]
        while True:
            item = work.get()
            if item is None:
                return
            key, dense, sparse = item
            try:
                results[key] = backend.score(dense, sparse)
                counts[i] += 1
            except Exception as exc:  # reported by the check
                errors.append(f"instance {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(len(backends))]
    for t in threads:
        t.start()
    return threads


class _PeakSampler:
    """Samples the device pool's total bytes every ~0.5 ms in a background thread."""

    def __init__(self) -> None:
        from workers.scoring.backends.cupy_pool import device_pool

        self.pool, self.peak, self._stop = device_pool(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.pool.total_bytes())
            time.sleep(0.0005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return int(max(self.peak, self.pool.total_bytes()))


def check_sharing(
    spec: ModelSpec, batch_rows: int = 4096, batches: int = 64, limit_batches: float = 2.5
) -> str:
    """4 instances on 4 streams in 4 threads drain a full queue under a small pool limit:
    weights are on the device once, the pool never exceeds its limit, every score is right."""
    from workers.scoring.backends.cupy_graph import FP32_MAX_ABS_ERROR, CupyBackend
    from workers.scoring.backends.cupy_pool import configure_pools, device_pool, pool_stats

    pool = device_pool()
    pool.free_all_blocks()
    used0 = pool.used_bytes()
    first = CupyBackend(spec)
    used1 = pool.used_bytes()
    backends = [first] + [CupyBackend(spec) for _ in range(SHARING_INSTANCES - 1)]
    used4 = pool.used_bytes()
    streams = {b.stream.ptr for b in backends}
    limit = used4 + int(limit_batches * first.workspace_bytes(batch_rows))
    distinct = [random_rows(spec.config, batch_rows, seed=10 + i) for i in range(8)]
    refs = [reference_scores(spec, d, s) for d, s in distinct]
    work: queue.Queue[Any] = queue.Queue(maxsize=batches + SHARING_INSTANCES)
    for k in range(batches):
        work.put((k, *distinct[k % len(distinct)]))
    waits0 = pool_stats()["waits"]
    configure_pools(limit_bytes=limit)
    pool.free_all_blocks()
    sampler = _PeakSampler()
    results: dict[int, Any] = {}
    errors: list[str] = []
    counts = [0] * SHARING_INSTANCES
    start = time.perf_counter()
    try:
        threads = _serve_queue(backends, work, results, errors, counts)
        for _ in threads:
            work.put(None)
        for t in threads:
            t.join(timeout=120)
        elapsed = time.perf_counter() - start
        peak = sampler.stop()
        stats = pool_stats()
    finally:
        configure_pools(limit_fraction=0.8)
        for b in backends:
            b.close()
    worst = max(_max_diff(results[k], refs[k % len(refs)]) for k in results) if results else 1.0
    detail = (
        f"weights {used1 - used0} B after 1 instance, +{used4 - used1} B for 3 more; "
        f"{len(streams)} streams; batches per instance {counts}; {len(results)}/{batches} "
        f"batches in {elapsed:.2f}s ({batches * batch_rows / elapsed:,.0f} rows/s); pool peak "
        f"{peak} B <= limit {limit} B; memory waits {stats['waits'] - waits0}; max diff "
        f"{worst:.1e}"
    )
    assert not errors, f"{detail}; errors: {errors[:3]}"
    assert len(results) == batches and worst <= FP32_MAX_ABS_ERROR, detail
    assert used4 - used1 < 1 << 20 and used1 - used0 > 0, f"weights uploaded twice? {detail}"
    assert len(streams) == SHARING_INSTANCES and min(counts) > 0, detail
    assert peak <= limit, detail
    return detail


def check_wait_then_succeed(spec: ModelSpec, rows: int = 4096) -> str:
    """A batch that does not fit waits (no error) and completes once memory is freed; a batch
    larger than the whole limit fails at once with a clear error."""
    import cupy

    from workers.scoring.backends.cupy_graph import FP32_MAX_ABS_ERROR, CupyBackend
    from workers.scoring.backends.cupy_pool import (
        PoolExhaustedError,
        configure_pools,
        device_pool,
        notify_freed,
        pool_stats,
    )

    dense, sparse = random_rows(spec.config, rows, seed=3)
    ref = reference_scores(spec, dense, sparse)
    backend = CupyBackend(spec)
    pool = device_pool()
    try:
        need = backend.workspace_bytes(rows)
        pool.free_all_blocks()
        limit = pool.used_bytes() + need + need // 2
        configure_pools(limit_bytes=limit)
        hog = cupy.cuda.alloc(need)  # leaves need/2 free: the batch cannot fit
        waits0 = pool_stats()["waits"]
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["scores"] = backend.score(dense, sparse)
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(0.5)
        waiting = thread.is_alive() and not result and pool_stats()["waits"] > waits0
        del hog
        notify_freed()
        thread.join(timeout=30)
        too_big = None
        try:
            big = 4 * (limit // backend.workspace_bytes(1) + 1)
            backend.score(*random_rows(spec.config, big, seed=4))
        except PoolExhaustedError as exc:
            too_big = str(exc)
    finally:
        configure_pools(limit_fraction=0.8)
        backend.close()
    assert waiting, f"the batch did not wait for memory: alive={thread.is_alive()} {result}"
    assert "scores" in result, f"the waiting batch failed: {result.get('error')!r}"
    diff = _max_diff(result["scores"], ref)
    assert diff <= FP32_MAX_ABS_ERROR, f"the waiting batch scored wrong: max diff {diff}"
    assert too_big, "a batch larger than the pool limit did not raise PoolExhaustedError"
    return f"waited while memory was short, then scored (max diff {diff:.1e}); too big: {too_big}"


def environment() -> str:
    """GPU, driver, CUDA and package versions."""
    import cupy
    import onnx
    import onnxruntime

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (
        f"gpu={name} ({props['totalGlobalMem'] / 2**30:.0f} GiB, sm_{props['major']}"
        f"{props['minor']}) driver={cupy.cuda.runtime.driverGetVersion()} "
        f"runtime={cupy.cuda.runtime.runtimeGetVersion()} cupy={cupy.__version__} "
        f"numpy={np.__version__} onnx={onnx.__version__} onnxruntime={onnxruntime.__version__} "
        f"python={platform.python_version()} cpus={os.cpu_count()}"
    )


def all_checks(spec: ModelSpec) -> list[tuple[str, Callable[[], str]]]:
    """Every check, in the order the self-test runs them."""
    return [
        ("environment", environment),
        ("parity fp32", lambda: check_parity(spec, "float32")),
        ("parity fp16", lambda: check_parity(spec, "float16")),
        ("out-of-range ids", lambda: check_out_of_range_ids(spec)),
        ("sharing (4 instances, small pool limit)", lambda: check_sharing(spec)),
        ("wait for memory then succeed", lambda: check_wait_then_succeed(spec)),
        ("cuda graphs captured", lambda: check_cuda_graphs_captured(spec)),
        ("parity fp32 cuda graphs", lambda: check_parity(spec, "float32", cuda_graphs=True)),
        ("parity fp16 cuda graphs", lambda: check_parity(spec, "float16", cuda_graphs=True)),
    ]


def run_checks(spec: ModelSpec, warn_only: tuple[str, ...] = ("cuda graphs captured",)
               ) -> list[CheckResult]:
    """Runs every check, printing one line each; returns the results."""
    results = []
    for name, check in all_checks(spec):
        start = time.perf_counter()
        try:
            detail, status = check(), "PASS"
        except Exception as exc:  # every failure is reported, then we go on
            status = "WARN" if name in warn_only else "FAIL"
            detail = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        result = CheckResult(name, status, detail, time.perf_counter() - start)
        print(f"[{result.status}] {name} ({result.seconds:.1f}s): {detail}", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the GPU self-test; exit status 0 when every check passes, 2 without a GPU."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu_selftest")
    parser.add_argument("--repo", type=Path, help="model repository (default: a temp build)")
    args = parser.parse_args(argv)
    from workers.scoring.backends import cuda_available

    ok, reason = cuda_available()
    if not ok:
        print(f"gpu-selftest: no GPU: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_model(args.repo, "ctr") if args.repo else build_spec(Path(tmp))
        results = run_checks(spec)
    failed = [r.name for r in results if r.status == "FAIL"]
    print(f"gpu-selftest: {len(results) - len(failed)}/{len(results)} passed; failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
