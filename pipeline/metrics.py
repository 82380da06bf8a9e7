"""Prometheus metrics, health and readiness of one worker process.

:class:`Metrics` is an actor middleware. Its hooks run for every record, so they only add
to plain counters and histogram buckets owned by the event loop (a prometheus-client
``labels().observe()`` costs several times more); a collector turns those, and the gauges
read at that moment (in-flight, paused and assigned partitions, consumer lag, batch queue,
GPU pool), into metric families when Prometheus scrapes. It also decides liveness and
readiness; ``pipeline.endpoint`` serves all three over HTTP. Every metric name is in
:data:`CATALOG`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline import headers as H
from pipeline.batcher import BatchObserver
from pipeline.lag import LagReader, PartitionLag, error_text
from pipeline.middleware import Middleware
from pipeline.setting_rules import setting
from pipeline.transport.base import TP, Outgoing, Record

if TYPE_CHECKING:
    from pipeline.actor import Actor

log = structlog.get_logger("adstream.metrics")


@dataclass(frozen=True)
class MetricsSection:
    """The metrics/health HTTP endpoint of each worker process."""

    port: int = setting(0, ge=0, le=65535)  # /metrics, /healthz, /readyz on this port; 0 = off
    host: str = setting("0.0.0.0", nonempty=True)  # interface to listen on
    lag_interval_s: float = setting(5.0, gt=0)  # how often consumer lag is read from the broker
    stall_after_s: float = setting(10.0, gt=0)  # /healthz fails when the event loop did not run this long


# name -> (type, help). Counters are exported as <name>_total, histograms as _bucket/_sum/_count.
CATALOG: dict[str, tuple[str, str]] = {
    "adstream_records_consumed": ("counter", "Records fetched from an input partition."),
    "adstream_records_processed": ("counter", "Records whose outputs Kafka acknowledged."),
    "adstream_dead_letters": ("counter", "Records sent to the dead-letter topic."),
    "adstream_messages_produced": ("counter", "Messages produced and acknowledged, by topic."),
    "adstream_records_committed": ("counter", "Input records covered by committed offsets."),
    "adstream_commits": ("counter", "Offset commits."),
    "adstream_pauses": ("counter", "Times the in-flight budget paused the partitions."),
    "adstream_rebalances": ("counter", "Partition assignments received."),
    "adstream_expired": ("counter", "Work dropped because its deadline had passed."),
    "adstream_rejected": ("counter", "Requests answered 'rejected' (invalid input)."),
    "adstream_partial": ("counter", "Requests answered 'partial' at their deadline."),
    "adstream_duplicates": ("counter", "Redelivered chunks dropped by the aggregator."),
    "adstream_stage_seconds": (
        "histogram", "Time from handing a fetched batch to the handler to Kafka acknowledging its outputs."),
    "adstream_kafka_queue_seconds": (
        "histogram", "Time a record waited in Kafka (record timestamp to fetch)."),
    "adstream_end_to_end_seconds": (
        "histogram", "Time from the client sending the request to this stage's output acked."),
    "adstream_batch_rows": ("histogram", "Rows per model batch."),
    "adstream_model_seconds": ("histogram", "Model compute time per batch."),
    "adstream_batch_queue_seconds": ("histogram", "Time a chunk waited in the batch queue."),
    "adstream_in_flight_records": ("gauge", "Records fetched but not done."),
    "adstream_paused_partitions": ("gauge", "Partitions paused for backpressure."),
    "adstream_assigned_partitions": ("gauge", "Partitions assigned to this member."),
    "adstream_consumer_lag_records": (
        "gauge", "Log end offset minus the group's committed offset, per owned partition."),
    "adstream_batch_queue_rows": ("gauge", "Rows waiting in the scorer's batch queue."),
    "adstream_spilled_batches": ("counter", "Batches run on the spill backend."),
    "adstream_shadow_abs_delta": (
        "histogram", "|shadow score - served score| per row the shadow version scored."),
    "adstream_spilled_rows": ("counter", "Rows scored on the spill backend."),
    "adstream_gpu_pool_bytes": (
        "gauge", "CuPy memory pools: device used/total/limit/peak, pinned used."),
    "adstream_gpu_pool_waits": ("counter", "Batches that waited for GPU pool memory."),
    "adstream_gpu_pool_wait_seconds": ("counter", "Time batches waited for GPU pool memory."),
    "adstream_ready": ("gauge", "1 when /readyz answers ready."),
}

HANDLER_COUNTS = ("expired", "rejected", "partial", "duplicates")
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
# 1, 2, 4 .. 16384 with a step between powers of two from 16 on (batch sizes near the
# preferred sizes are told apart, and the benchmark can time the model at formed sizes)
DELTA_BUCKETS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, .01, .03, .1, .3, 1.0)
"""|Δscore| buckets of a shadow version (CTRs lie in [0, 1])."""
ROW_BUCKETS = tuple(sorted({float(2 ** i) for i in range(15)}
                           | {float(3 * 2 ** i) for i in range(3, 13)}))


def sample_names() -> set[str]:
    """Every sample name this module can export (what a dashboard may query)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {name + s for name, (kind, _) in CATALOG.items() for s in suffixes[kind]}


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


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
        self._series: dict[str, _Series] = {}
        self._batches: dict[tuple[str, str], _BatchSeries] = {}
        self._counts: dict[str, Callable[[], Mapping[str, int]]] = {}
        self._queues: dict[tuple[str, str], Callable[[], int]] = {}
        self._spills: dict[tuple[str, str], Callable[[], tuple[int, int]]] = {}
        self._shadows: dict[tuple[str, str, str], _Histogram] = {}
        self._gpu_pool: Callable[[], Mapping[str, Any]] | None = None
        self._checks: dict[str, Callable[[], Check]] = {}
        self.broker_ok_at: float | None = None  # time.monotonic() of the last broker answer
        self.broker_error = "not asked yet"
        self.heartbeat_at: float | None = None  # time.monotonic(); None until the loop beats
        self.lag_interval_s = MetricsSection.lag_interval_s
        self.stall_after_s = MetricsSection.stall_after_s
        self.registry.register(_Collector(self))
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
        self._counts[actor] = counts

    def batch_observer(self, model: str, version: str) -> BatchObserver:
        """Records batch sizes, model time and queue waits of one model's batcher."""
        b = self._batches.setdefault((model, version), _BatchSeries())

        def observe(rows: int, compute_s: float, waits: list[float]) -> None:
            b.rows.observe(rows)
            b.model.observe(compute_s)
            for w in waits:
                b.queue.observe(w)

        return observe

    def watch_queue(self, model: str, version: str, queued_rows: Callable[[], int]) -> None:
        """The rows waiting in one model's batch queue, read at scrape time."""
        self._queues[(model, version)] = queued_rows

    def shadow_observer(self, model: str, version: str, shadow: str
                        ) -> Callable[[np.ndarray], None]:
        """Records |Δscore| rows of a shadow version against the served one."""
        hist = self._shadows.setdefault((model, version, shadow), _Histogram(DELTA_BUCKETS))

        def observe(delta: np.ndarray) -> None:
            hist.observe_many(delta)

        return observe

    def watch_spill(self, model: str, version: str,
                    spilled: Callable[[], tuple[int, int]]) -> None:
        """(batches, rows) one model's batcher ran on its spill backend, read at scrape time."""
        self._spills[(model, version)] = spilled

    def watch_gpu_pool(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """CuPy pool statistics (``configured``, ``used_bytes``, …), read at scrape time."""
        self._gpu_pool = stats

    def add_check(self, name: str, check: Callable[[], Check]) -> None:
        """One more condition for ``/readyz``."""
        self._checks[name] = check

    # ---- the actor loop's hooks --------------------------------------------------------------

    def _of(self, actor: Actor) -> _Series:
        name = actor.handler.name
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = _Series(name)
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
    def _produced(s: _Series, msgs: list[Outgoing]) -> None:
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
        """Alive unless the event loop stopped running (its heartbeat is old). Before the
        first beat the process is starting (loading models blocks the loop): alive."""
        if self.heartbeat_at is None:
            return True, {"alive": True, "starting": True}
        age = time.monotonic() - self.heartbeat_at
        ok = age < self.stall_after_s
        return ok, {"alive": ok, "event_loop_heartbeat_age_s": round(age, 3)}

    def readiness(self) -> dict[str, Check]:
        names = sorted(self.expected or self.actors)
        missing = [n for n in names if n not in self.actors]
        stopped = [n for n in names if n in self.stopped]
        checks = {}
        if self.stopping:
            checks["running"] = Check(False, "shutting down: draining in-flight work")
        elif not names:
            checks["running"] = Check(False, "no actors in this process")
        elif missing or stopped:
            checks["running"] = Check(False, "; ".join(
                [f"not started: {', '.join(missing)}"] * bool(missing)
                + [f"stopped: {', '.join(stopped)}"] * bool(stopped)))
        else:
            checks["running"] = Check(True, "consuming: " + ", ".join(names))
        idle = [n for n in names if not self.assigned(n)]
        checks["partitions"] = (
            Check(False, "no partitions assigned to " + ", ".join(idle)
                  + " (starting, rebalancing, or more members than partitions)")
            if idle else Check(True, "; ".join(
                f"{n}: {len(self.assigned(n))}" for n in names)))
        fresh = max(3 * self.lag_interval_s, 10.0)
        age = None if self.broker_ok_at is None else time.monotonic() - self.broker_ok_at
        checks["broker"] = (
            Check(True, f"answered {age:.1f}s ago") if age is not None and age < fresh else
            Check(False, f"no answer for {age:.0f}s" if age is not None else
                  f"unreachable ({self.broker_error})"))
        for name, check in self._checks.items():
            checks[name] = check()
        return checks

    def ready(self) -> bool:
        return all(c.ok for c in self.readiness().values())

    # ---- what a scrape sees ----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every family, from the accumulators and the state at this moment. Runs in the HTTP
        thread: it copies what the event loop mutates (``list(dict.items())`` is atomic)."""
        yield from self._actor_families()
        yield from self._batch_families()
        yield from self._gauge_families()

    def _actor_families(self) -> Iterator[Metric]:
        series = list(self._series.items())
        counters = {n: CounterMetricFamily(n, CATALOG[n][1], labels=labels) for n, labels in (
            ("adstream_records_consumed", ["actor", "topic", "partition"]),
            ("adstream_messages_produced", ["actor", "topic"]),
            *((n, ["actor"]) for n in _ACTOR_COUNTERS))}
        hists = {n: HistogramMetricFamily(n, CATALOG[n][1], labels=["actor"])
                 for n in _ACTOR_HISTOGRAMS}
        for name, s in series:
            for (topic, part), n in list(s.consumed.items()):
                counters["adstream_records_consumed"].add_metric([name, topic, str(part)], n)
            for topic, n in list(s.produced.items()):
                counters["adstream_messages_produced"].add_metric([name, topic], n)
            for metric, attr in _ACTOR_COUNTERS.items():
                counters[metric].add_metric([name], getattr(s, attr))
            for metric, attr in _ACTOR_HISTOGRAMS.items():
                getattr(s, attr).add_to(hists[metric], [name])
        yield from counters.values()
        yield from hists.values()

    def _batch_families(self) -> Iterator[Metric]:
        hists = {n: HistogramMetricFamily(n, CATALOG[n][1], labels=["model", "version"])
                 for n in _BATCH_HISTOGRAMS}
        for (model, version), b in list(self._batches.items()):
            for metric, attr in _BATCH_HISTOGRAMS.items():
                getattr(b, attr).add_to(hists[metric], [model, version])
        yield from hists.values()
        shadow = HistogramMetricFamily("adstream_shadow_abs_delta",
                                       CATALOG["adstream_shadow_abs_delta"][1],
                                       labels=["model", "version", "shadow_version"])
        for labels, h in list(self._shadows.items()):
            h.add_to(shadow, list(labels))
        yield shadow

    def _gauge_families(self) -> Iterator[Metric]:
        def family(name: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, CATALOG[name][1], labels=labels)

        in_flight = family("adstream_in_flight_records", ["actor"])
        paused = family("adstream_paused_partitions", ["actor"])
        assigned = family("adstream_assigned_partitions", ["actor"])
        lag = family("adstream_consumer_lag_records", ["actor", "group", "topic", "partition"])
        for name, actor in list(self.actors.items()):
            in_flight.add_metric([name], actor.in_flight)
            paused.add_metric([name], len(actor.paused))
            assigned.add_metric([name], len(self.assigned(name)))
            for p in self.lag(name):
                lag.add_metric([name, actor.group_id, p.topic, str(p.partition)], p.lag)
        yield from (in_flight, paused, assigned, lag)

        queue = family("adstream_batch_queue_rows", ["model", "version"])
        for (model, version), rows in list(self._queues.items()):
            queue.add_metric([model, version], rows())
        yield queue

        batches = CounterMetricFamily("adstream_spilled_batches",
                                      CATALOG["adstream_spilled_batches"][1],
                                      labels=["model", "version"])
        spilled_rows = CounterMetricFamily("adstream_spilled_rows",
                                           CATALOG["adstream_spilled_rows"][1],
                                           labels=["model", "version"])
        for (model, version), spilled in list(self._spills.items()):
            n_batches, n_rows = spilled()
            batches.add_metric([model, version], n_batches)
            spilled_rows.add_metric([model, version], n_rows)
        yield from (batches, spilled_rows)

        counts = {k: CounterMetricFamily(f"adstream_{k}", CATALOG[f"adstream_{k}"][1],
                                         labels=["actor"]) for k in HANDLER_COUNTS}
        for name, read in list(self._counts.items()):
            for k, v in read().items():
                counts[k].add_metric([name], v)
        yield from counts.values()

        if self._gpu_pool is not None:
            yield from _gpu_families(self._gpu_pool())
        ready = family("adstream_ready", [])
        ready.add_metric([], 1.0 if self.ready() else 0.0)
        yield ready


class _Histogram:
    """Bucket counts and a sum, updated by one thread (the event loop) without locks."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """``n`` observations of ``value`` (a batch's records share its time)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def observe_many(self, values: np.ndarray) -> None:
        """Every value of ``values`` (one pass in numpy)."""
        at = np.searchsorted(np.asarray(self.bounds), values, side="left")
        for i, n in enumerate(np.bincount(at, minlength=len(self.counts)).tolist()):
            self.counts[i] += n
        self.sum += float(np.sum(values))

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        counts, total, cumulative = list(self.counts), self.sum, 0
        buckets = []
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(labels, buckets, total)


_ACTOR_COUNTERS = {  # metric -> _Series attribute
    "adstream_records_processed": "processed",
    "adstream_dead_letters": "dead_letters",
    "adstream_records_committed": "committed",
    "adstream_commits": "commits",
    "adstream_pauses": "pauses",
    "adstream_rebalances": "rebalances",
}
_ACTOR_HISTOGRAMS = {
    "adstream_stage_seconds": "stage",
    "adstream_kafka_queue_seconds": "kafka_queue",
    "adstream_end_to_end_seconds": "end_to_end",
}
_BATCH_HISTOGRAMS = {
    "adstream_batch_rows": "rows",
    "adstream_model_seconds": "model",
    "adstream_batch_queue_seconds": "queue",
}


class _Series:
    """One actor's counters and histograms."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processed = self.dead_letters = self.committed = self.commits = 0
        self.pauses = self.rebalances = 0
        self.stage = _Histogram(LATENCY_BUCKETS)
        self.kafka_queue = _Histogram(LATENCY_BUCKETS)
        self.end_to_end = _Histogram(LATENCY_BUCKETS)
        self.consumed: dict[tuple[str, int], int] = {}
        self.produced: dict[str, int] = {}
        # per partition since assigned: the first offset fetched and the last one committed
        self.first_fetched: dict[tuple[str, int], int] = {}
        self.last_commit: dict[tuple[str, int], int] = {}

    def observe_end_to_end(self, headers: dict[str, bytes]) -> None:
        sent = H.int_header(headers, H.SENT_MS)
        if sent is not None:
            self.end_to_end.observe(max(0.0, time.time() - sent / 1000))


class _BatchSeries:
    """One model's batch sizes, model time and batch-queue waits."""

    def __init__(self) -> None:
        self.rows = _Histogram(ROW_BUCKETS)
        self.model = _Histogram(LATENCY_BUCKETS)
        self.queue = _Histogram(LATENCY_BUCKETS)


def _gpu_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    if not stats.get("configured"):
        return
    pool = GaugeMetricFamily("adstream_gpu_pool_bytes", CATALOG["adstream_gpu_pool_bytes"][1],
                             labels=["pool", "kind"])
    for kind in ("used", "total", "limit", "peak"):
        pool.add_metric(["device", kind], float(stats.get(f"{kind}_bytes", 0)))
    pool.add_metric(["pinned", "used"], float(stats.get("pinned_bytes", 0)))
    yield pool
    yield CounterMetricFamily("adstream_gpu_pool_waits", CATALOG["adstream_gpu_pool_waits"][1],
                              value=float(stats.get("waits", 0)))
    yield CounterMetricFamily("adstream_gpu_pool_wait_seconds",
                              CATALOG["adstream_gpu_pool_wait_seconds"][1],
                              value=float(stats.get("wait_seconds", 0.0)))


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics.collect())
