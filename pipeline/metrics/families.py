"""What a scrape sees: the metric families built from :class:`Metrics`' accumulators and the
state at that moment (in-flight, paused and assigned partitions, lag, batch queues, spills,
handler counters, the GPU pool, readiness)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.metrics.catalog import CATALOG, HANDLER_COUNTS
from pipeline.metrics.series import ACTOR_COUNTERS, ACTOR_HISTOGRAMS, BATCH_HISTOGRAMS

if TYPE_CHECKING:
    from pipeline.metrics.middleware import Metrics


class MetricsCollector(Collector):
    """The prometheus-client collector of one :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(families(self.metrics))


def families(m: Metrics) -> Iterator[Metric]:
    """Every family, from the accumulators and the state at this moment. Runs in the HTTP
    thread: it copies what the event loop mutates (``list(dict.items())`` is atomic)."""
    yield from _actor_families(m)
    yield from _batch_families(m)
    yield from _gauge_families(m)


def _actor_families(m: Metrics) -> Iterator[Metric]:
    series = list(m.series.items())
    counters = {n: CounterMetricFamily(n, CATALOG[n][1], labels=labels) for n, labels in (
        ("adstream_records_consumed", ["actor", "topic", "partition"]),
        ("adstream_messages_produced", ["actor", "topic"]),
        *((n, ["actor"]) for n in ACTOR_COUNTERS))}
    hists = {n: HistogramMetricFamily(n, CATALOG[n][1], labels=["actor"])
             for n in ACTOR_HISTOGRAMS}
    for name, s in series:
        for (topic, part), n in list(s.consumed.items()):
            counters["adstream_records_consumed"].add_metric([name, topic, str(part)], n)
        for topic, n in list(s.produced.items()):
            counters["adstream_messages_produced"].add_metric([name, topic], n)
        for metric, attr in ACTOR_COUNTERS.items():
            counters[metric].add_metric([name], getattr(s, attr))
        for metric, attr in ACTOR_HISTOGRAMS.items():
            getattr(s, attr).add_to(hists[metric], [name])
    yield from counters.values()
    yield from hists.values()


def _batch_families(m: Metrics) -> Iterator[Metric]:
    hists = {n: HistogramMetricFamily(n, CATALOG[n][1], labels=["model", "version"])
             for n in BATCH_HISTOGRAMS}
    for (model, version), b in list(m.batches.items()):
        for metric, attr in BATCH_HISTOGRAMS.items():
            getattr(b, attr).add_to(hists[metric], [model, version])
    yield from hists.values()
    shadow = HistogramMetricFamily("adstream_shadow_abs_delta",
                                   CATALOG["adstream_shadow_abs_delta"][1],
                                   labels=["model", "version", "shadow_version"])
    for labels, h in list(m.shadows.items()):
        h.add_to(shadow, list(labels))
    yield shadow


def _gauge_families(m: Metrics) -> Iterator[Metric]:
    def family(name: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, CATALOG[name][1], labels=labels)

    in_flight = family("adstream_in_flight_records", ["actor"])
    paused = family("adstream_paused_partitions", ["actor"])
    assigned = family("adstream_assigned_partitions", ["actor"])
    lag = family("adstream_consumer_lag_records", ["actor", "group", "topic", "partition"])
    for name, actor in list(m.actors.items()):
        in_flight.add_metric([name], actor.in_flight)
        paused.add_metric([name], len(actor.paused))
        assigned.add_metric([name], len(m.assigned(name)))
        for p in m.lag(name):
            lag.add_metric([name, actor.group_id, p.topic, str(p.partition)], p.lag)
    yield from (in_flight, paused, assigned, lag)

    queue = family("adstream_batch_queue_rows", ["model", "version"])
    for (model, version), rows in list(m.queues.items()):
        queue.add_metric([model, version], rows())
    yield queue

    batches = CounterMetricFamily("adstream_spilled_batches",
                                  CATALOG["adstream_spilled_batches"][1],
                                  labels=["model", "version"])
    spilled_rows = CounterMetricFamily("adstream_spilled_rows",
                                       CATALOG["adstream_spilled_rows"][1],
                                       labels=["model", "version"])
    for (model, version), spilled in list(m.spills.items()):
        n_batches, n_rows = spilled()
        batches.add_metric([model, version], n_batches)
        spilled_rows.add_metric([model, version], n_rows)
    yield from (batches, spilled_rows)

    counts = {k: CounterMetricFamily(f"adstream_{k}", CATALOG[f"adstream_{k}"][1],
                                     labels=["actor"]) for k in HANDLER_COUNTS}
    for name, read in list(m.handler_counts.items()):
        for k, v in read().items():
            counts[k].add_metric([name], v)
    yield from counts.values()

    if m.gpu_pool is not None:
        yield from _gpu_families(m.gpu_pool())
    ready = family("adstream_ready", [])
    ready.add_metric([], 1.0 if m.ready() else 0.0)
    yield ready


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
