"""The role table, and building and running the roles from settings in this process.

:data:`ROLES` holds what differs per role (its input topic, its handler and the counters
/metrics reports for it); :data:`TOPOLOGIES` the two ways of running them, and
:func:`topics` the topics they use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from pipeline.actor import Actor, Handler
from pipeline.admin import AdminRoutes
from pipeline.batcher import DynamicBatcher
from pipeline.endpoint import keep_fresh, start_server
from pipeline.kafka_clients import kafka_options
from pipeline.membership import claim
from pipeline.metrics import Check, Metrics
from pipeline.middleware import Middleware
from pipeline.tracing import Tracing
from pipeline.transport import Transport, open_transport
from workers.aggregation.aggregator import Aggregator
from workers.features.actor import FeatureActor
from workers.features.spec import FeaturePipeline
from workers.fused import FusedFeaturesScorer
from workers.scoring.repository import ModelSpec, load_model
from workers.scoring.scorer import ScoringWorker
from workers.scoring.versions import ModelVersions
from workers.settings import Settings, TopicsSection

log = structlog.get_logger("adstream.roles")
Counts = Callable[[], dict[str, int]]


@dataclass(frozen=True)
class Role:
    """What differs between roles: the topic a role consumes, and its handler with the
    counters /metrics reports for it (keys of ``pipeline.metrics.HANDLER_COUNTS``), built
    from settings."""

    consumes: Callable[[TopicsSection], str]
    build: Callable[[Settings, Transport, Metrics | None], tuple[Handler, Counts]]


@dataclass(frozen=True)
class Topology:
    """A way of running the roles: its name in reports, its roles, and the one that scores."""

    name: str
    roles: tuple[str, ...]
    scoring_role: str


def topics(settings: Settings) -> list[str]:
    """Every topic the roles use (what ``adstream topics create`` creates)."""
    t = settings.topics
    return [t.requests, t.features, t.scores, t.results, t.dlq, t.changelog]


def transport_for(settings: Settings, *, wait_for_broker: bool = True) -> Transport:
    """The transport of ``settings``; a worker's waits ``kafka.connect_timeout_s`` for its
    broker, a one-shot command's (``wait_for_broker=False``) reports a missing one at once."""
    if settings.kafka.bootstrap.startswith("memory://"):
        return open_transport(settings.kafka.bootstrap)
    return open_transport(settings.kafka.bootstrap,
                          kafka_options(settings.kafka, wait_for_broker=wait_for_broker))


def model_spec(settings: Settings) -> ModelSpec:
    sc = settings.scorer
    return load_model(Path(sc.model_repo), sc.model, sc.version or None)


def feature_pipeline(settings: Settings, spec: ModelSpec) -> FeaturePipeline:
    c = spec.config
    return FeaturePipeline.from_spec(
        list(c.sparse_features), list(c.sparse_buckets), list(c.dense_features),
        Path(settings.features.spec) if settings.features.spec else None)


def scoring_version(settings: Settings, spec: ModelSpec, metrics: Metrics | None = None
                    ) -> tuple[DynamicBatcher, list[Callable[..., np.ndarray]]]:
    """One version's batcher over ``instances`` backends (each its own onnxruntime session
    or stream) plus its spill instances, and the score functions of all of them."""
    from workers.scoring.backends import create_backend

    sc, c = settings.scorer, spec.config
    instances = sc.instances or c.instance_count
    options: dict[str, object] = {"dtype": sc.precision, "cuda_graphs": sc.cuda_graphs,
                                  "pool_limit_fraction": sc.gpu_pool_fraction}
    if sc.intra_op_threads or c.intra_op_threads:
        options["intra_op_threads"] = sc.intra_op_threads or c.intra_op_threads
    backends = [create_backend(spec, sc.backend or None, **options) for _ in range(instances)]
    spill = [create_backend(spec, sc.spill_backend, **options)
             for _ in range(sc.spill_instances if sc.spill_backend else 0)]
    batcher = DynamicBatcher(
        [b.score for b in backends],
        max_rows=sc.max_batch_rows or c.max_batch_rows,
        max_wait_ms=sc.max_wait_ms if sc.max_wait_ms >= 0 else c.max_wait_ms,
        on_batch=metrics.batch_observer(spec.name, str(spec.version)) if metrics else None,
        spill=[b.score for b in spill],
        spill_queue_rows=sc.spill_queue_rows or None,
        spill_after_ms=sc.spill_after_ms,
    )
    if metrics is not None:
        from workers.scoring.backends.cupy_pool import pool_stats

        metrics.watch_queue(spec.name, str(spec.version), lambda: batcher.queued_rows)
        metrics.watch_spill(spec.name, str(spec.version), lambda: (
            batcher.stats.spilled_batches, batcher.stats.spilled_rows))
        metrics.watch_gpu_pool(pool_stats)
        kinds = sorted({type(b).__name__ for b in backends})
        detail = f"{instances} x {', '.join(kinds)}"
        if spill:
            detail += f", spill {len(spill)} x {type(spill[0]).__name__}"
        _INSTANCES[(spec.name, spec.version)] = detail
    return batcher, [b.score for b in [*backends, *spill]]


_INSTANCES: dict[tuple[str, int], str] = {}  # what each loaded version runs on (readiness)


def scoring_batcher(settings: Settings, spec: ModelSpec,
                    metrics: Metrics | None = None) -> DynamicBatcher:
    """One version's batcher (see :func:`scoring_version`)."""
    batcher, _ = scoring_version(settings, spec, metrics)
    if metrics is not None:
        detail = f"{spec.name} version {spec.version}: {_INSTANCES[(spec.name, spec.version)]}"
        metrics.add_check("model", lambda: Check(True, detail))
    return batcher


def scoring_models(settings: Settings, spec: ModelSpec,
                   metrics: Metrics | None = None) -> ModelVersions:
    """The scorer's model versions, starting from ``spec``; new ones are built the same way."""
    sc = settings.scorer
    extra = frozenset(v for v in (sc.ab_version, sc.shadow_version) if v)
    models = ModelVersions(Path(sc.model_repo), spec,
                           lambda sp: scoring_version(settings, sp, metrics),
                           pinned=sc.version or None, extra=extra)
    if metrics is not None:
        def check() -> Check:
            v = models.serving.spec
            return Check(True, f"{v.name} version {v.version} serving "
                               f"({_INSTANCES.get((v.name, v.version), '?')}); loaded "
                               f"{sorted(models.loaded)}")
        metrics.add_check("model", check)
    return models


def _features(settings: Settings, transport: Transport, metrics: Metrics | None
              ) -> tuple[Handler, Counts]:
    features = FeatureActor(settings, feature_pipeline(settings, model_spec(settings)),
                            transport)
    return features, lambda: {"expired": features.expired,
                              "rejected": features.rejected_count}


def _scoring_worker(settings: Settings, spec: ModelSpec, metrics: Metrics | None
                    ) -> ScoringWorker:
    scorer = ScoringWorker(settings, scoring_models(settings, spec, metrics),
                           n_dense=len(spec.config.dense_features),
                           n_sparse=len(spec.config.sparse_features))
    if metrics is not None and scorer.shadow is not None:
        scorer.on_shadow = metrics.shadow_observer(
            spec.name, str(spec.version), str(scorer.shadow.version))
    return scorer


def _scorer(settings: Settings, transport: Transport, metrics: Metrics | None
            ) -> tuple[Handler, Counts]:
    scorer = _scoring_worker(settings, model_spec(settings), metrics)
    return scorer, lambda: {"expired": scorer.expired}


def _fused(settings: Settings, transport: Transport, metrics: Metrics | None
           ) -> tuple[Handler, Counts]:
    spec = model_spec(settings)
    scorer = _scoring_worker(settings, spec, metrics)
    features = FeatureActor(settings, feature_pipeline(settings, spec), transport)
    return FusedFeaturesScorer(features, scorer), lambda: {
        "expired": features.expired + scorer.expired, "rejected": features.rejected_count}


def _aggregator(settings: Settings, transport: Transport, metrics: Metrics | None
                ) -> tuple[Handler, Counts]:
    aggregator = Aggregator(settings, transport)
    return aggregator, lambda: {
        **{k: aggregator.counts[k] for k in ("expired", "partial", "duplicates")},
        "rejected": aggregator.counts["reused"]}


ROLES: dict[str, Role] = {
    "features": Role(lambda t: t.requests, _features),
    "scorer": Role(lambda t: t.features, _scorer),
    "aggregator": Role(lambda t: t.scores, _aggregator),
    "fused": Role(lambda t: t.requests, _fused),  # features and scorer in one hop
}
TOPOLOGIES = {
    "three hops": Topology("three hops", ("features", "scorer", "aggregator"), "scorer"),
    # one hop: the fused role answers requests itself
    "fused": Topology("fused", ("fused",), "fused"),
}
THREE_HOPS = TOPOLOGIES["three hops"].roles
FUSED = TOPOLOGIES["fused"].roles


def topology(fused: bool) -> Topology:
    """The fused (one hop) or the three-hop topology."""
    return TOPOLOGIES["fused" if fused else "three hops"]


def _role(name: str) -> Role:
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; roles are {', '.join(ROLES)}")
    return ROLES[name]


def build_handler(role: str, settings: Settings, transport: Transport,
                  metrics: Metrics | None = None, tracing: Tracing | None = None) -> Handler:
    """The role's handler; with ``metrics``, its batcher and counters are registered there;
    its spans go to ``tracing``'s tracer (none: tracing off)."""
    handler, counts = _role(role).build(settings, transport, metrics)
    if metrics is not None:
        metrics.watch_counts(role, counts)
    handler.tracer = tracing.tracer if tracing is not None else None
    return handler


def build_actor(role: str, settings: Settings, transport: Transport,
                middleware: Sequence[Middleware] = (), metrics: Metrics | None = None,
                tracing: Tracing | None = None) -> Actor:
    consumes = _role(role).consumes(settings.topics)
    handler = build_handler(role, settings, transport, metrics, tracing)
    lost_after_s = None if settings.kafka.bootstrap.startswith("memory://") \
        else settings.kafka.session_timeout_ms / 1000
    return Actor(transport, handler, f"{settings.kafka.group_prefix}-{role}", [consumes],
                 settings.actor, [*middleware, metrics] if metrics is not None else middleware,
                 lost_after_s=lost_after_s)


async def ensure_topics(settings: Settings, transport: Transport) -> list[str]:
    t = settings.topics
    return await transport.create_topics(topics(settings), t.partitions, t.replication)


async def run_roles(
    roles: Iterable[str], settings: Settings, stop: asyncio.Event,
    transport: Transport | None = None, ready: asyncio.Event | None = None,
    middleware: Sequence[Middleware] = (), metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> list[Actor]:
    """Run the given roles in this process until ``stop`` is set; return their actors.

    ``ready`` is set once every actor has been assigned its partitions. With
    ``metrics.port`` set, the process serves /metrics, /healthz and /readyz there from
    before the models load until its actors finished draining. Spans go to ``tracing``
    (default: from the ``tracing`` settings, exported over OTLP, and flushed at the end).
    """
    transport = transport or transport_for(settings)
    if metrics is None and settings.metrics.port:
        metrics = Metrics()
    own_tracing = tracing is None
    tracing = tracing or Tracing.from_settings(settings.tracing)
    admin = AdminRoutes()
    server = start_server(metrics, settings.metrics, admin) \
        if metrics and settings.metrics.port else None
    try:
        actors = [build_actor(r, settings, transport, middleware, metrics, tracing)
                  for r in roles]
        for a in actors:
            for name, route in a.handler.admin_routes().items():
                admin.add(name, route)
        if not await claim(stop):  # a standby, models loaded, stopped before it was needed
            return actors
        finished = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            runs = [tg.create_task(a.run(stop)) for a in actors]
            if ready is not None:
                tg.create_task(_all_ready(actors, ready, stop))
            if metrics is not None:
                metrics.expect(a.handler.name for a in actors)
                if server is not None:
                    tg.create_task(keep_fresh(metrics, settings.metrics, transport, stop,
                                              finished))
            await asyncio.wait(runs)
            finished.set()
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        if own_tracing:
            await asyncio.to_thread(tracing.close)
    return actors


async def _all_ready(actors: list[Actor], ready: asyncio.Event, stop: asyncio.Event) -> None:
    for a in actors:
        waiter = asyncio.ensure_future(a.ready.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
    if not stop.is_set():
        ready.set()
