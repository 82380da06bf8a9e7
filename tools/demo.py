"""``adstream demo``: the whole flow on one machine, with a short summary at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from pipeline import runner
from pipeline.config import amended
from pipeline.headers import now_ms
from schemas.json_form import request_from_json
from schemas.messages import ScoreResult
from tools import kafka
from workers.settings import Settings


def _print_summary(broker: str, results: dict[str, ScoreResult], sent: dict[str, float],
                   received: dict[str, float], n_rows: int, elapsed: float, lost: int) -> None:
    lat = np.array([(received[r] - sent[r]) * 1000 for r in received if r in sent])
    by_status: dict[str, int] = {}
    for res in results.values():
        by_status[res.status] = by_status.get(res.status, 0) + 1
    print()
    print("adstream demo summary")
    print(f"  broker        {broker}")
    print(f"  requests      {len(sent)} ({n_rows} candidates)")
    print(f"  results       {len(results)}  " + "  ".join(f"{k}={v}"
                                                        for k, v in sorted(by_status.items()))
          + (f"  lost={lost}" if lost else ""))
    if len(lat):
        print(f"  latency       p50 {np.percentile(lat, 50):.1f} ms   "
              f"p99 {np.percentile(lat, 99):.1f} ms   max {lat.max():.1f} ms")
    print(f"  throughput    {len(results) / elapsed:.0f} requests/s, "
          f"{n_rows / elapsed:.0f} candidates/s over {elapsed:.2f} s")
    first = next((r for r in results.values() if r.status == "ok"), None)
    if first is not None:
        top = ", ".join(f"ad {a} (ctr {s:.4f} × bid {b:.2f})"
                        for a, s, b in zip(first.ad_id[:3].tolist(), first.score[:3].tolist(),
                                           first.bid[:3].tolist(), strict=True))
        print(f"  e.g. {first.request_id}: {top}")


def run_demo(settings: Settings, *, broker: str, requests: int, seed: int, rate: float,
             fused: bool = True) -> int:
    from loadtest.generate import generate
    from pipeline.kafka_clients import kafka_options
    from workers.client import ResultWaiter, send_requests
    from workers.roles import ensure_topics, run_roles, topology, transport_for
    from workers.scoring.reference_model import build_reference_model

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # transient start-up noise
    started: kafka.LocalBroker | None = None
    if broker == "memory":
        settings = amended(settings, kafka={"bootstrap": "memory://demo"})
        label = "in-process broker (memory://demo)"
    else:
        bootstrap = settings.kafka.bootstrap
        opts = kafka_options(settings.kafka)
        if not asyncio.run(kafka.broker_answers(bootstrap, timeout_s=2, opts=opts)):
            _host, _, port = bootstrap.partition(":")
            print(f"no Kafka broker answers at {bootstrap}; starting one (the first start "
                  "downloads Kafka from Maven Central, once)")
            started = kafka.start_broker(int(port or 9092))
        label = f"Apache Kafka {kafka.KAFKA_VERSION} at {bootstrap}" + (
            " (started by the demo)" if started else "")
    repo = Path(settings.scorer.model_repo)
    if not (repo / settings.scorer.model / "config.toml").exists():
        path = build_reference_model(repo, name=settings.scorer.model)
        print(f"built the reference model: {path}")
    settings = amended(settings, topics={"partitions": min(settings.topics.partitions, 4)})

    async def main(stop: asyncio.Event) -> int:
        transport = transport_for(settings)
        await ensure_topics(settings, transport)
        roles_stop = asyncio.Event()
        ready = asyncio.Event()
        roles = asyncio.create_task(run_roles(list(topology(fused).roles), settings, roles_stop,
                                              transport, ready))
        try:
            reqs = [request_from_json(d, now_ms() + 30_000)
                    for d in generate(requests, seed=seed, candidates="uniform:20,300")]
            producer = transport.producer()
            await producer.start()
            await asyncio.wait_for(ready.wait(), 120)
            async with ResultWaiter(transport, settings.topics.results) as waiter:
                futs = {r.request_id: waiter.expect(r.request_id) for r in reqs}
                served = ("the fused role (one hop)" if fused else
                          "three roles: features → scorer → aggregator")
                print(f"sending {len(reqs)} generated requests at {rate:.0f}/s to {served} …")
                t0 = time.monotonic()
                for r in reqs:
                    r.deadline_ms = now_ms() + 30_000
                sent = await send_requests(producer, reqs, settings.topics.requests, rate=rate)
                done, pending = await asyncio.wait(futs.values(), timeout=60)
                elapsed = time.monotonic() - t0
                results = {rid: f.result() for rid, f in futs.items() if f in done}
                _print_summary(label, results, sent, waiter.received_at,
                               sum(r.n_candidates for r in reqs), elapsed, len(pending))
            await producer.stop()
            return 0 if not pending else 1
        finally:
            roles_stop.set()
            await roles

    try:
        return runner.run(main)
    finally:
        if started is not None:
            kafka.stop_broker(started.data_dir)
            print(f"stopped the Kafka broker the demo started ({started.data_dir})")
