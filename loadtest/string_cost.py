"""What string categoricals cost: CPU per request with strings ÷ with integer ids, one run.

The same generated requests twice — categorical values as integer ids, and as strings
(``generate(strings=True)``) — go through the feature actor's real batch handler
(``FeatureActor.handle``: decode, the feature plan over a whole fetch, chunk encoding) and
through the model (onnxruntime on the feature matrices, one call per fetch), in this
process, without Kafka. Rounds alternate integers and strings so that a change in the
machine's load hits both; the medians are compared. Strings only change the feature
stage; the scoring column shows how much of a request's CPU that stage is.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.generate import generate
from pipeline.headers import now_ms
from pipeline.transport.base import Record
from pipeline.transport.memory import MemoryBroker, MemoryTransport
from schemas.json_form import request_from_json
from schemas.messages import encode
from workers.features.actor import FeatureActor
from workers.roles import feature_pipeline, model_spec
from workers.scoring.backends import create_backend
from workers.settings import Settings


@dataclass(frozen=True)
class Cost:
    """CPU µs per request of one encoding, median over rounds."""

    features_us: float
    scoring_us: float
    bytes_per_request: float

    @property
    def total_us(self) -> float:
        return self.features_us + self.scoring_us


def _records(settings: Settings, requests: int, candidates: int, seed: int, strings: bool
             ) -> list[Record]:
    now = now_ms()
    out = []
    for i, d in enumerate(generate(requests, seed=seed, candidates=f"fixed:{candidates}",
                                   timeout_ms=3_600_000, strings=strings)):
        req = request_from_json(d, now)
        out.append(Record(settings.topics.requests, 0, i, req.user_id.encode(), encode(req),
                          {}, now))
    return out


def measure(settings: Settings, *, requests: int = 1000, candidates: int = 100,
            fetch: int = 20, rounds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Both encodings' costs and their ratio (strings ÷ integers)."""
    spec = model_spec(settings)
    name = f"string-cost-{os.getpid()}"
    try:
        actor = FeatureActor(settings, feature_pipeline(settings, spec),
                             MemoryTransport(f"memory://{name}"))
        backend = create_backend(spec, "onnxruntime")
        data = {kind: _records(settings, requests, candidates, seed, kind == "strings")
                for kind in ("integers", "strings")}
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in data}
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for kind, records in data.items():
                samples[kind].append(asyncio.run(_one_round(actor, backend, records, fetch)))
    finally:
        MemoryBroker.drop(name)
    costs = {}
    for kind, got in samples.items():
        feats = statistics.median(f for f, _ in got[1:])
        scoring = statistics.median(s for _, s in got[1:])
        size = sum(len(r.value) for r in data[kind]) / requests
        costs[kind] = Cost(feats / requests * 1e6, scoring / requests * 1e6, size)
    ints, strs = costs["integers"], costs["strings"]
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "requests": requests, "candidates": candidates, "fetch": fetch, "rounds": rounds,
        "integers": ints, "strings": strs,
        "features_ratio": strs.features_us / ints.features_us,
        "total_ratio": strs.total_us / ints.total_us,
        "bytes_ratio": strs.bytes_per_request / ints.bytes_per_request,
    }


async def _one_round(actor: FeatureActor, backend: Any, records: list[Record], fetch: int
                     ) -> tuple[float, float]:
    """CPU seconds of the feature stage and of the model over ``records``, in fetches."""
    features = scoring = 0.0
    for at in range(0, len(records), fetch):
        batch = records[at:at + fetch]
        t0 = time.process_time()
        results = await actor.handle(batch)
        features += time.process_time() - t0
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"a generated request was refused: {bad[0]}")
        _, live, _ = await actor.prepare(batch)  # the model's inputs (not timed)
        dense = np.concatenate([p.dense for p in live])
        sparse = np.concatenate([p.sparse for p in live])
        t1 = time.process_time()
        backend.score(dense, sparse)
        scoring += time.process_time() - t1
    return features, scoring


def report(m: dict[str, Any]) -> str:
    i, s = m["integers"], m["strings"]
    return "\n".join([
        "string categoricals: CPU per request, in this process (no Kafka)",
        f"  machine      {m['machine']}",
        (f"  requests     {m['requests']} × {m['candidates']} candidates, fetches of "
        f"{m['fetch']}, median of {m['rounds']} rounds (integers and strings alternating)"),
        "                 feature stage   + model    = total    request bytes",
        (f"  integer ids  {i.features_us:9.1f} µs {i.scoring_us:9.1f} µs {i.total_us:9.1f} µs"
        f" {i.bytes_per_request:9.0f}"),
        (f"  strings      {s.features_us:9.1f} µs {s.scoring_us:9.1f} µs {s.total_us:9.1f} µs"
        f" {s.bytes_per_request:9.0f}"),
        (f"  strings ÷ integers: feature stage {m['features_ratio']:.2f}×, features + model "
        f"{m['total_ratio']:.2f}×, bytes {m['bytes_ratio']:.2f}×"),
    ])
