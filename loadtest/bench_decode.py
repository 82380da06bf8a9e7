"""The feature actor's per-request work, alone: decoding requests and the feature plan.

Decodes the same generated requests one by one (``schemas.messages.decode``, what the
feature actor did per record) and a fetch at a time (``schemas.request_batch``, what it
does now), then runs the feature plan over batches of them with the batch decode's joined
columns and without; everything in one run, on the loop-free hot path, as CPU µs per
request and ratios.

    python -m loadtest.bench_decode --requests 2000 --candidates 100
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from loadtest.generate import generate
from pipeline.runner import tune_gc
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, decode, encode
from schemas.request_batch import RequestBatch, decode_requests
from workers.features.spec import FeaturePipeline
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import load_model

LIMIT = 4 * 1024 * 1024


def _us_per_request(fn: Callable[[], object], n: int, repeat: int) -> float:
    """The best of ``repeat`` timings of ``fn`` (over ``n`` requests), in CPU µs per request."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def _batches(values: list[bytes], size: int) -> list[RequestBatch]:
    return [decode_requests(values[i:i + size], [None] * size, max_bytes=LIMIT)
            for i in range(0, len(values) - size + 1, size)]


def _plans(plan: FeaturePipeline, batches: list[RequestBatch], joined: bool) -> object:
    return [plan.batch(b.requests, b.columns if joined else None)  # type: ignore[arg-type]
            for b in batches]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sizes", default="1,8,32", help="requests per batch (a fetch)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    repo = Path(tempfile.mkdtemp(prefix="adstream-bench-decode-"))
    build_reference_model(repo)
    c = load_model(repo, "ctr").config
    plan = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features), None)
    values = [encode(request_from_json(d, 0)) for d in generate(
        args.requests, candidates=f"fixed:{args.candidates}") if "candidates" in d]
    n = len(values)
    tune_gc()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus; {n} requests of {args.candidates} candidates "
          f"({len(values[0]):,} bytes each); CPU µs per request, best of {args.repeat}")
    def one_by_one() -> object:
        return [decode(v, ScoreRequest, max_bytes=LIMIT) for v in values]

    alone = _us_per_request(one_by_one, n, args.repeat)
    print(f"decode one by one                  {alone:7.1f}")
    for size in sizes:
        t = _us_per_request(partial(_batches, values, size), n // size * size, args.repeat)
        print(f"decode {size:3d} at a time (one pass)   {t:7.1f}   {alone / t:4.2f}x")
    for size in sizes:
        batches = _batches(values, size)
        m = len(batches) * size
        assert all(isinstance(r, ScoreRequest) for x in batches for r in x.requests)
        joined = _us_per_request(partial(_plans, plan, batches, True), m, args.repeat)
        apart = _us_per_request(partial(_plans, plan, batches, False), m, args.repeat)
        print(f"plan over {size:3d} requests: joined columns {joined:7.1f}, gathered per "
              f"request {apart:7.1f}   {apart / joined:4.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
