"""GPU benchmark: CuPy FP32/FP16 (and FP16 with CUDA graphs) vs onnxruntime CPU, same rows.

``python -m loadtest.bench_gpu`` prints, per batch size, rows/s and p50/p99 batch latency of
each backend, ratios to onnxruntime CPU measured in the same run, and a sharing measurement
(4 CuPy instances on 4 streams in 4 threads draining one queue).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.gpu_selftest import build_spec, environment
from loadtest.random_rows import random_rows
from workers.scoring.backends import ScoringBackend
from workers.scoring.repository import ModelSpec, load_model

SIZES = (256, 1024, 4096, 16384, 65536)


@dataclass
class Cell:
    """One backend at one batch size."""

    backend: str
    rows: int
    reps: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float


def measure(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    dense: np.ndarray,
    sparse: np.ndarray,
    budget_s: float,
    min_reps: int = 5,
    max_reps: int = 3000,
    warmup: int = 2,
) -> tuple[int, float, float, float]:
    """Times ``score`` on one batch until ``budget_s`` (and at least ``min_reps``) have passed;
    returns (reps, rows/s, p50 ms, p99 ms)."""
    for _ in range(warmup):
        score(dense, sparse)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        score(dense, sparse)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    ms = np.asarray(times) * 1e3
    return len(times), dense.shape[0] * len(times) / total, *np.percentile(ms, [50, 99])


def _backends(spec: ModelSpec, cpu_threads: int, sizes: tuple[int, ...],
              skip_cpu: bool) -> dict[str, ScoringBackend]:
    from workers.scoring.backends.cupy_graph import CupyBackend
    from workers.scoring.backends.onnx_cpu import OnnxCpuBackend

    backends: dict[str, ScoringBackend] = {
        "cupy-fp32": CupyBackend(spec, dtype="float32"),
        "cupy-fp16": CupyBackend(spec, dtype="float16"),
        "cupy-fp16-graphs": CupyBackend(
            spec, dtype="float16", cuda_graphs=True, preferred_batch_rows=sizes
        ),
    }
    if not skip_cpu:
        backends["onnxruntime-cpu"] = OnnxCpuBackend(spec, intra_op_threads=cpu_threads)
    return backends


def bench_table(
    spec: ModelSpec, sizes: tuple[int, ...], budget_s: float, cpu_threads: int, skip_cpu: bool
) -> list[Cell]:
    """Measures every backend at every size on the same random rows."""
    dense_all, sparse_all = random_rows(spec.config, max(sizes), seed=7)
    backends = _backends(spec, cpu_threads, sizes, skip_cpu)
    cells: list[Cell] = []
    try:
        for rows in sizes:
            dense, sparse = dense_all[:rows], sparse_all[:rows]
            for name, backend in backends.items():
                cpu = name.startswith("onnxruntime")
                budget = budget_s * (2.0 if cpu else 1.0)
                min_reps = 3 if cpu and rows >= 16384 else 5
                reps, rps, p50, p99 = measure(
                    backend.score, dense, sparse, budget, min_reps, warmup=1 if cpu else 3
                )
                cells.append(Cell(name, rows, reps, rps, p50, p99))
                print(
                    f"  measured {name:<18} rows={rows:<6} reps={reps:<5} {rps:>14,.0f} rows/s",
                    flush=True,
                )
    finally:
        for backend in backends.values():
            backend.close()
    return cells


def print_table(cells: list[Cell]) -> None:
    """Prints the rows/s and latency table plus ratios to onnxruntime CPU."""
    print(f"\n{'backend':<18} {'batch':>6} {'reps':>5} {'rows/s':>14} {'p50 ms':>9} {'p99 ms':>9}")
    for c in cells:
        print(
            f"{c.backend:<18} {c.rows:>6} {c.reps:>5} {c.rows_per_s:>14,.0f} "
            f"{c.p50_ms:>9.3f} {c.p99_ms:>9.3f}"
        )
    by = {(c.backend, c.rows): c for c in cells}
    sizes = sorted({c.rows for c in cells})
    pairs = [
        ("cupy-fp32", "onnxruntime-cpu"),
        ("cupy-fp16", "onnxruntime-cpu"),
        ("cupy-fp16-graphs", "onnxruntime-cpu"),
        ("cupy-fp16", "cupy-fp32"),
        ("cupy-fp16-graphs", "cupy-fp16"),
    ]
    print("\nratios of rows/s (same rows, same run)")
    print(f"{'ratio':<38}" + "".join(f"{s:>9}" for s in sizes))
    for a, b in pairs:
        if all((a, s) in by and (b, s) in by for s in sizes):
            ratios = [by[(a, s)].rows_per_s / by[(b, s)].rows_per_s for s in sizes]
            print(f"{a + ' / ' + b:<38}" + "".join(f"{r:>9.2f}" for r in ratios))


def bench_sharing(
    spec: ModelSpec, instances: int = 4, rows: int = 4096, seconds: float = 3.0, **options: object
) -> dict[str, float]:
    """``instances`` CuPy backends (own streams) in as many threads draining one queue."""
    from workers.scoring.backends.cupy_graph import CupyBackend
    from workers.scoring.backends.cupy_pool import device_pool, pool_stats, reset_peak

    pool = device_pool()
    pool.free_all_blocks()
    used0 = pool.used_bytes()
    backends = [CupyBackend(spec, **options)]  # type: ignore[arg-type]
    used1 = pool.used_bytes()
    backends += [CupyBackend(spec, **options) for _ in range(instances - 1)]  # type: ignore[arg-type]
    used_n = pool.used_bytes()
    batches = [random_rows(spec.config, rows, seed=20 + i) for i in range(8)]
    for b in backends:
        b.score(*batches[0])
    single = measure(backends[0].score, *batches[0], budget_s=1.0)[1]
    reset_peak()
    work: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=4 * instances)
    done = [0] * instances

    def serve(i: int) -> None:
        while (item := work.get()) is not None:
            backends[i].score(*item)
            done[i] += 1

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(instances)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        work.put(batches[k % len(batches)])  # blocks while the queue is full
        k += 1
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stats = pool_stats()
    for b in backends:
        b.close()
    aggregate = sum(done) * rows / elapsed
    return {
        "instances": instances,
        "rows": rows,
        "aggregate_rows_per_s": aggregate,
        "single_rows_per_s": single,
        "ratio": aggregate / single,
        "weights_bytes_1": used1 - used0,
        "extra_bytes_for_more": used_n - used1,
        "peak_bytes": stats["peak_bytes"],
        "limit_bytes": stats["limit_bytes"],
        "batches_per_instance": str(done),
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the tables; exit status 2 without a GPU."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_gpu")
    parser.add_argument("--repo", type=Path, help="model repository (default: a temp build)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="batch sizes")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per GPU cell")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-cpu", action="store_true", help="skip onnxruntime CPU")
    args = parser.parse_args(argv)
    from workers.scoring.backends import cuda_available

    ok, reason = cuda_available()
    if not ok:
        print(f"bench_gpu: no GPU: {reason}", file=sys.stderr)
        return 2
    sizes = tuple(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_model(args.repo, "ctr") if args.repo else build_spec(Path(tmp))
        print(f"machine: {environment()}")
        print(
            f"config: model={spec.name} v{spec.version}; random rows (dense N(0,1), ids uniform); "
            f"onnxruntime CPU with intra_op_threads={args.cpu_threads}; {args.budget_s}s per GPU "
            "cell (2x for CPU); latency = one score() call incl. host<->device copies"
        )
        cells = bench_table(spec, sizes, args.budget_s, args.cpu_threads, args.skip_cpu)
        print_table(cells)
        shares = {
            "cupy-fp32": bench_sharing(spec, dtype="float32"),
            "cupy-fp16-graphs": bench_sharing(spec, dtype="float16", cuda_graphs=True),
        }
    print("\nsharing: 4 instances, 4 streams, 4 threads, one queue of 4096-row batches")
    print("(ratio = aggregate rows/s / one instance alone; bytes are device pool bytes)")
    print(f"  {'':<24}" + "".join(f"{name:>20}" for name in shares))
    for key in shares["cupy-fp32"]:
        values = [v[key] for v in shares.values()]
        texts = [f"{v:,.2f}" if isinstance(v, float) else str(v) for v in values]
        print(f"  {key:<24}" + "".join(f"{t:>20}" for t in texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
