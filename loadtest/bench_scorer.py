"""The scoring worker at full load through the in-process broker, as a ratio of its backend.

``--backend none`` replaces the model with one that returns zeros at once, which measures
what the runtime itself (broker, codec, actor loop, batcher) can carry.

Pre-produces FeatureChunks of random rows, runs one scoring worker (actor loop, codec,
dynamic batcher, backend) until every chunk is answered, and compares its rows/s with the
raw backend's rows/s on batches of the size the batcher actually formed, in the same run.

    python -m loadtest.bench_scorer --backend onnxruntime --rows 200000
    python -m loadtest.bench_scorer --backend cupy --rows 2000000 --max-batch-rows 16384
    python -m loadtest.bench_scorer --backend none --bootstrap 127.0.0.1:9092   # real Kafka

With ``--bootstrap`` the chunks go through a running Kafka broker (fresh topics, deleted
afterwards) instead of the in-process one: the same worker, paying aiokafka's per-record
cost on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.random_rows import random_rows
from pipeline.actor import Actor
from pipeline.batcher import DynamicBatcher
from pipeline.config import ActorSection, amended
from pipeline.logs import configure
from pipeline.runner import loop_factory, tune_gc
from pipeline.transport import Outgoing, Transport
from schemas.messages import FeatureChunk, encode
from workers.roles import transport_for
from workers.scoring.backends import ScoringBackend, create_backend
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import ModelSpec, load_model
from workers.scoring.scorer import ScoringWorker
from workers.scoring.versions import ModelVersions
from workers.settings import Settings


class NoModel:
    """A model that returns zeros at once: measures the runtime's own per-row ceiling."""

    name = "none"

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return np.zeros(dense.shape[0], np.float32)

    def close(self) -> None:
        return None


def _backend(spec: ModelSpec, args: argparse.Namespace) -> ScoringBackend:
    if args.backend == "none":
        return NoModel()
    return create_backend(spec, args.backend, **_options(args))


def _options(args: argparse.Namespace) -> dict[str, object]:
    if args.backend == "cupy":
        return {"dtype": args.dtype, "cuda_graphs": args.cuda_graphs}
    return {"intra_op_threads": 1}


async def _pipeline(spec: ModelSpec, args: argparse.Namespace, dense: np.ndarray,
                    sparse: np.ndarray) -> tuple[float, DynamicBatcher]:
    run_id = f"{os.getpid()}-{int(time.time())}"
    s = amended(Settings(),
                kafka={"bootstrap": args.bootstrap or f"memory://bench-scorer-{os.getpid()}"},
                actor={"max_message_bytes": 64 * 1024 * 1024},
                # fresh topics: nothing left from a run before
                topics={name: f"bench-scorer.{name}.{run_id}"
                        for name in ("features", "scores", "dlq")})
    transport = transport_for(s)
    topics = [s.topics.features, s.topics.scores, s.topics.dlq]
    await transport.create_topics(topics, args.partitions)
    try:
        return await _run_worker(spec, args, dense, sparse, s, transport)
    finally:
        await transport.delete_topics(topics)
        await transport.close()


async def _run_worker(spec: ModelSpec, args: argparse.Namespace, dense: np.ndarray,
                      sparse: np.ndarray, s: Settings, transport: Transport
                      ) -> tuple[float, DynamicBatcher]:
    producer = transport.producer()
    await producer.start()
    n = dense.shape[0]
    step = args.chunk_rows
    n_chunks = (n + step - 1) // step
    for i in range(n_chunks):
        sl = slice(i * step, (i + 1) * step)
        rows = dense[sl].shape[0]
        chunk = FeatureChunk(request_id=f"r{i}", chunk=0, n_chunks=1, n_candidates=rows,
                             top_k=10, reply_to=None, deadline_ms=None,
                             ad_id=np.arange(rows, dtype=np.int64),
                             bid=np.ones(rows, np.float32), dense=dense[sl], sparse=sparse[sl])
        await producer.send(Outgoing(s.topics.features, encode(chunk), key=f"r{i}".encode()))
    await producer.flush()
    await producer.stop()
    backends = [_backend(spec, args) for _ in range(args.instances)]
    batcher = DynamicBatcher([b.score for b in backends], max_rows=args.max_batch_rows,
                             max_wait_ms=args.max_wait_ms, max_queue_rows=4 * args.max_batch_rows)
    models = ModelVersions(spec.path.parent.parent.parent, spec, lambda _: (batcher, []))
    worker = ScoringWorker(s, models, len(spec.config.dense_features),
                           len(spec.config.sparse_features))
    actor = Actor(transport, worker, f"bench-{s.topics.features}", [s.topics.features],
                  ActorSection(
        max_in_flight=args.in_flight, resume_in_flight=args.in_flight // 2,
        max_in_flight_bytes=64 * 1024 * 1024))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    # the clock starts once the group gave it partitions (or the actor failed: raise that)
    ready = asyncio.create_task(actor.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()
    start = time.perf_counter()
    while actor.stats.produced < n_chunks:
        if task.done():
            task.result()
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    return n / elapsed, batcher


def raw_rows_per_s(spec: ModelSpec, args: argparse.Namespace, dense: np.ndarray,
                   sparse: np.ndarray, batch: int) -> float:
    backend = _backend(spec, args)
    backend.score(dense[:batch], sparse[:batch])  # warm-up
    rows = 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.raw_seconds:
        off = (rows // batch * batch) % max(1, dense.shape[0] - batch)
        backend.score(dense[off:off + batch], sparse[off:off + batch])
        rows += batch
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "cupy", "none"],
                   help="none: a model that returns zeros, to measure the runtime's ceiling")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--chunk-rows", type=int, default=256)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--max-batch-rows", type=int, default=8192)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--in-flight", type=int, default=4000)
    p.add_argument("--raw-seconds", type=float, default=3.0)
    p.add_argument("--repo", type=Path, default=None)
    p.add_argument("--bootstrap", default=None,
                   help="a running Kafka broker (host:port) instead of the in-process one")
    args = p.parse_args(argv)
    configure("console", "warning")
    repo = args.repo or Path(tempfile.mkdtemp(prefix="adstream-bench-"))
    if not (repo / "ctr" / "config.toml").exists():
        build_reference_model(repo)
    spec = load_model(repo, "ctr")
    dense, sparse = random_rows(spec.config, args.rows)
    tune_gc()
    # the event loop the workers run on (uvloop where installed), so this measures them
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        pipeline_rps, batcher = runner.run(_pipeline(spec, args, dense, sparse))
    sizes = np.array(batcher.stats.sizes)
    typical = int(np.median(sizes))
    raw = raw_rows_per_s(spec, args, dense, sparse, typical)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus; backend {args.backend} {_options(args)}")
    print(f"config: rows={args.rows} chunk_rows={args.chunk_rows} partitions={args.partitions} "
          f"max_batch_rows={args.max_batch_rows} max_wait_ms={args.max_wait_ms} "
          f"instances={args.instances}")
    print(f"batches formed: {len(sizes)}, median {typical} rows, mean {sizes.mean():.0f}, "
          f"max {sizes.max()}")
    broker = f"Kafka at {args.bootstrap}" if args.bootstrap else "the in-process broker"
    print(f"scoring worker through {broker}: {pipeline_rps:,.0f} rows/s = "
          f"{pipeline_rps / args.chunk_rows:,.0f} messages/s")
    print(f"raw {args.backend} at {typical}-row batches:         {raw:,.0f} rows/s")
    print(f"ratio worker / raw: {pipeline_rps / raw:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
