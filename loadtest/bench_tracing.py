"""What tracing costs on the handler path: off, on with no request sampled, on with every
request traced, and off a second time (the run's own noise), interleaved in one run.

Each step hands one batch of requests through the three roles' handlers as the actor
would (features, then the scorer on its FeatureChunks, then the aggregator on its
ScoreChunks, with the batch clock the actor gives a traced handler), and times it; the
four variants take turns step by step on the same handlers (only their tracer and the
sampling ratio change), so the machine's drift hits all alike, and each is summed up by
its median step. No broker: what is timed is the stages' own work,
where the tracing code lives. "on" is the real SDK with a batch span processor whose
exporter drops the spans (OTLP's network cost is its own thread's).

    python -m loadtest.bench_tracing --steps 40 --requests 100   # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from loadtest.run_environment import machine
from loadtest.generate import generate
from pipeline.actor import Handler, Held
from pipeline.config import amended
from pipeline.headers import now_ms
from pipeline.logs import configure
from pipeline.runner import tune_gc
from pipeline.tracing import Tracing, begin_batch
from pipeline.transport import Outgoing, open_transport
from pipeline.transport.base import Record
from schemas.json_form import request_from_json
from schemas.messages import encode
from workers.roles import build_handler
from workers.scoring.reference_model import build_reference_model
from workers.settings import Settings

VARIANTS = ("off", "on, none sampled", "on, all sampled", "off again")


class _Dropped:
    """A span exporter that counts the spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _tracing(variant: str) -> tuple[Tracing, _Dropped | None]:
    if variant.startswith("off"):
        return Tracing(), None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    dropped = _Dropped()
    provider.add_span_processor(BatchSpanProcessor(dropped))  # type: ignore[arg-type]
    return Tracing(provider.get_tracer("adstream"), provider), dropped


def _records(outs: Sequence[Outgoing], topic: str) -> list[Record]:
    """What a consumer of ``outs`` reads (the broker's part, not timed)."""
    now = now_ms()
    return [Record(topic, 0, i, o.key, o.value, dict(o.headers), now)
            for i, o in enumerate(outs)]


def _outputs(results: Sequence[object]) -> list[Outgoing]:
    out: list[Outgoing] = []
    for r in results:
        if isinstance(r, list):
            out.extend(r)
        elif isinstance(r, Held) and r.send:
            out.extend(r.send)
        elif isinstance(r, Exception):
            raise r
    return out


async def _step(roles: list[Handler], requests: list[Record], s: Settings
                ) -> tuple[int, int, int]:
    """One batch through the three handlers: (wall ns and CPU ns of this process, all its
    threads, spent in them; answers)."""
    wall = cpu = 0
    records = requests
    topics = (s.topics.features, s.topics.scores, s.topics.results)
    answers = 0
    for handler, topic in zip(roles, topics, strict=True):
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        clock = begin_batch(time.time_ns()) if handler.tracer is not None else None
        results = await handler.handle(records)
        if clock is not None:
            clock.sent(time.time_ns())
        wall += time.perf_counter_ns() - start
        cpu += time.process_time_ns() - start_cpu
        outs = _outputs(results)
        records = _records(outs, topic)
        answers = len(outs)
    return wall, cpu, answers


Times = dict[str, list[tuple[int, int]]]


async def _bench(args: argparse.Namespace, repo: Path) -> tuple[Times, dict[str, int]]:
    s = amended(Settings(), kafka={"bootstrap": "memory://bench-tracing"}, log={"level": "warning"},
                # a batch runs at once: the step times the work, not a wait
                scorer={"model_repo": str(repo), "max_wait_ms": 0.0})
    transport = open_transport(s.kafka.bootstrap)
    now = now_ms()
    base = [request_from_json(d, now) for d in
            generate(args.requests, seed=1, candidates=args.candidates, timeout_ms=3_600_000)]
    tracings = {v: _tracing(v) for v in VARIANTS}
    # one scorer (one model session) and one aggregator for all variants, and a features
    # role for each sampling ratio, so that only the tracer and the ratio differ between them
    features = {ratio: build_handler("features", amended(s, tracing={"sample_ratio": ratio}),
                                     transport) for ratio in (0.0, 1.0)}
    shared = [build_handler(r, s, transport) for r in ("scorer", "aggregator")]
    handlers = [*features.values(), *shared]
    times: Times = {v: [] for v in VARIANTS}

    async def send(msgs: list[Outgoing], source: object = None) -> None:
        return None

    async with asyncio.TaskGroup() as tg:
        for h in handlers:
            await h.open(tg, send)
        try:
            for step in range(args.steps + 1):  # step 0 warms every variant up
                order = VARIANTS[step % 4:] + VARIANTS[:step % 4]
                for v in order:
                    roles = [features[1.0 if v == "on, all sampled" else 0.0], *shared]
                    for h in roles:
                        h.tracer = tracings[v][0].tracer
                    reqs = [dataclasses.replace(r, request_id=f"{r.request_id}-{step}-{v}")
                            for r in base]  # the aggregator answers each id once
                    msgs = [Outgoing(s.topics.requests, encode(r), key=r.user_id.encode())
                            for r in reqs]
                    wall, cpu, answers = await _step(roles, _records(msgs, s.topics.requests), s)
                    if answers != len(reqs):
                        raise RuntimeError(f"{v}: {answers} answers for {len(reqs)} requests")
                    if step:
                        times[v].append((wall, cpu))
        finally:
            for h in handlers:
                await h.close()
    spans = {}
    for v, (tracing, dropped) in tracings.items():
        tracing.close()
        spans[v] = dropped.spans if dropped else 0
    return times, spans


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps of each variant")
    p.add_argument("--requests", type=int, default=100, help="requests per batch")
    p.add_argument("--candidates", default="uniform:2,20", help="candidates per request")
    p.add_argument("--repo", type=Path, default=None)
    args = p.parse_args(argv)
    configure("console", "warning")
    repo = args.repo or Path(tempfile.mkdtemp(prefix="adstream-bench-"))
    if not (repo / "ctr" / "config.toml").exists():
        build_reference_model(repo)
    tune_gc()
    times, spans = asyncio.run(_bench(args, repo))
    m = machine()
    print(f"machine: {m['cpu']}, {m.get('cpus_usable', m['cpus'])} usable cpus, "
          f"python {m['python']}")
    print(f"config: features -> scorer -> aggregator handlers, batches of {args.requests} "
          f"requests of {args.candidates} candidates, {args.steps} steps per variant "
          "(interleaved), onnxruntime")
    off_wall = statistics.median(w for w, _ in times["off"])
    off_cpu = statistics.median(c for _, c in times["off"])
    n = args.requests * (args.steps + 1)
    print("per request (median step / requests): CPU of this process (all threads) and "
          "wall time, and the ratio of each to off")
    for v in VARIANTS:
        wall = statistics.median(w for w, _ in times[v])
        cpu = statistics.median(c for _, c in times[v])
        print(f"  {v:17s} CPU {cpu / args.requests / 1000:6.1f} us ({cpu / off_cpu:.3f})  "
              f"wall {wall / args.requests / 1000:6.1f} us ({wall / off_wall:.3f})  "
              f"spans per request {spans[v] / n:4.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
