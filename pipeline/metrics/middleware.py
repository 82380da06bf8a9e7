"""The actor middleware that counts and times the loop.

Its hooks run for every record, so they only add to plain counters and histogram buckets
owned by the event loop (a prometheus-client ``labels().observe()`` costs several times
more): :mod:`.series`. What the roles register (handler counters, batch observers, queue,
spill and GPU-pool readers, readiness checks) is read when Prometheus scrapes
(:mod:`.families`); liveness and readiness are decided in :mod:`.readiness`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import Metric

from pipeline.batcher import BatchObserver
from pipeline.lag import LagReader, PartitionLag, error_text
from pipeline.metrics.catalog import HANDLER_COUNTS
from pipeline.metrics.families import MetricsCollector, families
from pipeline.metrics.histogram import Histogram
from pipeline.metrics.readiness import Check, health, readiness
from pipeline.metrics.section import MetricsSection
from pipeline.metrics.series import DELTA_BUCKETS, ActorSeries, BatchSeries
from pipeline.middleware import Middleware
from pipeline.transport.base import TP, Outgoing, Record

if TYPE_CHECKING:
    from pipeline.actor import Actor

log = structlog.get_logger("adstream.metrics")


class Metrics(Middleware):
    """Counts and times the actor loop; collects gauges, lag and readiness at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.actors: dict[str, Actor] = {}
        self.expected: set[str] = set()
        self.stopped: set[str] = set()
        self.stopping = False
        self._assigned: dict[str, frozenset[TP]] = {}
        self._lag: dict[str, tuple[PartitionLag, ...]] = {}
        self.series: dict[str, ActorSeries] = {}
        self.batches: dict[tuple[str, str], BatchSeries] = {}
        self.handler_counts: dict[str, Callable[[], Mapping[str, int]]] = {}
        self.queues: dict[tuple[str, str], Callable[[], int]] = {}
        self.spills: dict[tuple[str, str], Callable[[], tuple[int, int]]] = {}
        self.shadows: dict[tuple[str, str, str], Histogram] = {}
        self.gpu_pool: Callable[[], Mapping[str, Any]] | None = None
        self.checks: dict[str, Callable[[], Check]] = {}
        self.broker_ok_at: float | None = None  # time.monotonic() of the last broker answer
        self.broker_error = "not asked yet"
        self.heartbeat_at: float | None = None  # time.monotonic(); None until the loop beats
        self.lag_interval_s = MetricsSection.lag_interval_s
        self.stall_after_s = MetricsSection.stall_after_s
        self.registry.register(MetricsCollector(self))
        # the process's CPU, memory, file descriptors and garbage collections, as usual
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # ---- what the roles register ----------------------------------------------------------

    def expect(self, actors: Iterable[str]) -> None:
        """The actors this process runs; it is not ready until each has partitions."""
        self.expected |= set(actors)

    def watch_counts(self, actor: str, counts: Callable[[], Mapping[str, int]]) -> None:
        """A handler's own counters (keys from :data:`HANDLER_COUNTS`), read at scrape time."""
        unknown = set(counts()) - set(HANDLER_COUNTS)
        if unknown:
            raise ValueError(f"{actor}: unknown handler counts {sorted(unknown)}; "
                             f"known: {', '.join(HANDLER_COUNTS)}")
        self.handler_counts[actor] = counts

    def batch_observer(self, model: str, version: str) -> BatchObserver:
        """Records batch sizes, model time and queue waits of one model's batcher."""
        b = self.batches.setdefault((model, version), BatchSeries())

        def observe(rows: int, compute_s: float, waits: list[float]) -> None:
            b.rows.observe(rows)
            b.model.observe(compute_s)
            for w in waits:
                b.queue.observe(w)

        return observe

    def watch_queue(self, model: str, version: str, queued_rows: Callable[[], int]) -> None:
        """The rows waiting in one model's batch queue, read at scrape time."""
        self.queues[(model, version)] = queued_rows

    def shadow_observer(self, model: str, version: str, shadow: str
                        ) -> Callable[[np.ndarray], None]:
        """Records |Δscore| rows of a shadow version against the served one."""
        hist = self.shadows.setdefault((model, version, shadow), Histogram(DELTA_BUCKETS))

        def observe(delta: np.ndarray) -> None:
            hist.observe_many(delta)

        return observe

    def watch_spill(self, model: str, version: str,
                    spilled: Callable[[], tuple[int, int]]) -> None:
        """(batches, rows) one model's batcher ran on its spill backend, read at scrape time."""
        self.spills[(model, version)] = spilled

    def watch_gpu_pool(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """CuPy pool statistics (``configured``, ``used_bytes``, …), read at scrape time."""
        self.gpu_pool = stats

    def add_check(self, name: str, check: Callable[[], Check]) -> None:
        """One more condition for ``/readyz``."""
        self.checks[name] = check

    # ---- the actor loop's hooks --------------------------------------------------------------

    def _of(self, actor: Actor) -> ActorSeries:
        name = actor.handler.name
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = ActorSeries(name)
        return series

    def on_start(self, actor: Actor) -> None:
        name = actor.handler.name
        self.actors[name] = actor
        self.stopped.discard(name)
        self._assigned.setdefault(name, frozenset())
        self._of(actor)

    def on_stop(self, actor: Actor) -> None:
        self.stopped.add(actor.handler.name)

    def before_batch(self, actor: Actor, records: Sequence[Record]) -> None:
        s = self._of(actor)
        first = records[0]
        key = (first.topic, first.partition)
        s.consumed[key] = s.consumed.get(key, 0) + len(records)
        if key not in s.first_fetched:
            s.first_fetched[key] = first.offset
        now = time.time()
        for rec in records:
            if rec.timestamp_ms > 0:
                s.kafka_queue.observe(max(0.0, now - rec.timestamp_ms / 1000))

    def after_batch(self, actor: Actor, records: Sequence[Record], outputs: list[Outgoing],
                    errors: int, seconds: float) -> None:
        s = self._of(actor)
        s.processed += len(records)
        s.stage.observe(seconds, len(records))
        s.dead_letters += errors
        self._produced(s, outputs)

    def on_send(self, actor: Actor, msgs: list[Outgoing]) -> None:
        self._produced(self._of(actor), msgs)

    @staticmethod
    def _produced(s: ActorSeries, msgs: list[Outgoing]) -> None:
        produced = s.produced
        for o in msgs:
            produced[o.topic] = produced.get(o.topic, 0) + 1
            s.observe_end_to_end(o.headers)

    def on_commit(self, actor: Actor, offsets: dict[TP, int]) -> None:
        s = self._of(actor)
        s.commits += 1
        advanced = 0
        for tp, off in offsets.items():
            before = s.last_commit.get(tp, s.first_fetched.get(tp, off))
            advanced += max(0, off - before)
            s.last_commit[tp] = off
        s.committed += advanced

    def on_pause(self, actor: Actor, tps: set[TP]) -> None:
        self._of(actor).pauses += 1

    def on_assigned(self, actor: Actor, tps: set[TP]) -> None:
        name = actor.handler.name
        self._of(actor).rebalances += 1
        self._assigned[name] = self._assigned.get(name, frozenset()) | tps

    def on_revoked(self, actor: Actor, tps: set[TP]) -> None:
        name = actor.handler.name
        s = self._of(actor)
        self._assigned[name] = self._assigned.get(name, frozenset()) - tps
        for tp in tps:
            s.first_fetched.pop(tp, None)
            s.last_commit.pop(tp, None)
        lag = self._lag.get(name, ())
        self._lag[name] = tuple(p for p in lag if p.tp not in tps)

    # ---- lag, health, readiness ------------------------------------------------------------

    def assigned(self, actor: str) -> frozenset[TP]:
        return self._assigned.get(actor, frozenset())

    def lag(self, actor: str) -> tuple[PartitionLag, ...]:
        return self._lag.get(actor, ())

    async def read_lag(self, reader: LagReader) -> bool:
        """Read every actor's lag from the broker (which also proves the broker answers);
        False when it did not answer."""
        try:
            for name, actor in list(self.actors.items()):
                tps = self.assigned(name)
                group = actor.group_id
                if tps:
                    lags = await reader.lag(group, tps)
                    owned = self.assigned(name)  # a rebalance may have happened meanwhile
                    self._lag[name] = tuple(p for p in lags if p.tp in owned)
                else:
                    await reader.describe(group)
                    self._lag[name] = ()
        except Exception as e:  # any failure means: the broker did not answer
            if self.broker_ok_at is not None or self.broker_error == "not asked yet":
                log.warning("cannot read consumer lag from the broker", error=repr(e))
            self.broker_ok_at = None
            self.broker_error = error_text(e)
            self._lag.clear()
            return False
        self.broker_ok_at = time.monotonic()
        self.broker_error = ""
        return True

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive unless the event loop stopped running (:func:`.readiness.health`)."""
        return health(self)

    def readiness(self) -> dict[str, Check]:
        """Each condition of ``/readyz`` (:func:`.readiness.readiness`)."""
        return readiness(self)

    def ready(self) -> bool:
        return all(c.ok for c in self.readiness().values())

    def collect(self) -> Iterator[Metric]:
        """Every family a scrape sees (:func:`.families.families`)."""
        return families(self)
