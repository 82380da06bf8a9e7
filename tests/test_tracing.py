"""Tracing: a request's spans cover every stage with the right parent, on the in-process
broker (three roles and fused), agree with the load tester's stage breakdown, and reach an
OTLP/HTTP collector; with tracing off the trace context passes through unchanged."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import numpy as np
import pytest
from inprocess import kafka_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loadtest.generate import generate
from loadtest.replay import stamps_of
from loadtest.summary import stage_durations
from pipeline.headers import TRACEPARENT, now_ms
from pipeline.actor import Held
from pipeline.config import ConfigError, amended, load_config
from pipeline.tracing import Tracing, begin_batch, parent_of, stage_span
from pipeline.transport import Outgoing
from pipeline.transport.base import Record
from pipeline.transport.memory import MemoryBroker
from schemas.json_form import request_from_json
from schemas.messages import ScoreChunk, ScoreRequest, encode
from workers.aggregation.aggregator import Aggregator
from workers.client import ResultWaiter, request_message
from workers.roles import FUSED, THREE_HOPS, ensure_topics, run_roles, transport_for
from workers.settings import Settings

_names = itertools.count()
CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract"
CLIENT = "client"


@pytest.fixture
def settings(model_repo: Any) -> Iterator[Settings]:
    name = f"trace{next(_names)}"
    yield amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                  scorer={"model_repo": str(model_repo)},
                  features={"chunk_rows": 64},  # requests of up to 200 candidates: 1-4 chunks
                  topics={"partitions": 2}, log={"level": "warning"},
                  tracing={"sample_ratio": 1.0})  # requests without a traceparent start a trace
    MemoryBroker.drop(name)


@pytest.fixture
def exporter() -> Iterator[tuple[Tracing, InMemorySpanExporter, trace.Tracer]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield Tracing(provider.get_tracer("adstream"), provider), spans, \
        provider.get_tracer("test-client")
    provider.shutdown()


def _requests(n: int, seed: int) -> list[ScoreRequest]:
    now = int(time.time() * 1000)
    return [request_from_json(d, now)
            for d in generate(n, seed=seed, candidates="uniform:1,200", timeout_ms=30_000)]


async def _serve(settings: Settings, roles: tuple[str, ...], sends: list[Any],
                 tracing: Tracing | None) -> dict[str, Any]:
    """Run ``roles``, send (request, headers) pairs, return each request's result record."""
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run_roles(list(roles), settings, stop, transport, ready=ready,
                                         tracing=tracing))
    await asyncio.wait_for(ready.wait(), 60)
    producer = transport.producer()
    await producer.start()
    got: dict[str, Any] = {}
    async with ResultWaiter(transport, settings.topics.results) as waiter:
        futs = {req.request_id: waiter.expect(req.request_id) for req, _ in sends}
        for req, extra in sends:
            msg = request_message(req, settings.topics.requests)
            msg.headers.update(extra)
            await producer.send(msg)
        await producer.flush()
        await asyncio.wait(futs.values(), timeout=30)
        got = {rid: waiter.headers.get(rid, {}) for rid in futs}
    await producer.stop()
    stop.set()
    await task
    return got


def _traceparent(span: trace.Span) -> dict[str, bytes]:
    c = span.get_span_context()
    return {TRACEPARENT: f"00-{c.trace_id:032x}-{c.span_id:016x}-01".encode()}


def _by_request(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    """Stage spans by request id."""
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        rid = (s.attributes or {}).get("adstream.request_id")
        if isinstance(rid, str):
            out.setdefault(rid, []).append(s)
    return out


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> dict[str, list[Any]]:
    """The steps of a stage span (its children that are not the next stages' spans)."""
    out: dict[str, list[Any]] = {}
    for s in spans:
        if s.parent is not None and s.parent.span_id == parent.context.span_id \
                and "adstream.stage" not in (s.attributes or {}):
            out.setdefault(s.name, []).append(s)
    return out


def _ms(start: int | None, end: int | None) -> float:
    assert start is not None and end is not None
    return (end - start) / 1e6


def _check_stage(spans: tuple[ReadableSpan, ...], stage: ReadableSpan, steps: set[str]
                 ) -> dict[str, list[Any]]:
    """``stage``'s children are ``queue wait`` (from its start) and ``steps``, inside it."""
    kids = _children(spans, stage)
    assert set(kids) == {"queue wait", *steps}, (stage.name, set(kids))
    (queue,) = kids["queue wait"]
    assert queue.start_time == stage.start_time
    for group in kids.values():
        for k in group:
            assert stage.start_time <= k.start_time <= k.end_time <= stage.end_time, k.name
            assert k.context.trace_id == stage.context.trace_id
    return kids


async def test_three_role_spans_cover_every_stage_with_the_right_parent(settings, exporter
                                                                        ) -> None:
    tracing, spans_out, client = exporter
    reqs = _requests(12, seed=3)
    roots = {r.request_id: client.start_span(CLIENT) for r in reqs[:10]}
    unsampled = reqs[10]  # a traceparent without the sampled flag: no spans, passed on
    off = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-00"
    sends = [(r, _traceparent(roots[r.request_id])) for r in reqs[:10]]
    sends += [(unsampled, {TRACEPARENT: off}), (reqs[11], {})]  # the last: a new trace
    results = await _serve(settings, THREE_HOPS, sends, tracing)
    for root in roots.values():
        root.end()
    spans = spans_out.get_finished_spans()
    staged = _by_request(spans)
    assert unsampled.request_id not in staged
    assert results[unsampled.request_id][TRACEPARENT] == off
    assert reqs[11].request_id in staged  # no traceparent: the feature stage starts a trace
    chunks_seen = set()
    for req in reqs[:10]:
        root = roots[req.request_id].get_span_context()
        mine = {}
        for s in staged[req.request_id]:
            mine.setdefault(s.name, []).append(s)
        (features,) = mine["features"]
        (aggregator,) = mine["aggregator"]
        scorers = mine["scorer"]
        n_chunks = -(-req.n_candidates // settings.features.chunk_rows)
        chunks_seen.add(n_chunks)
        assert len(scorers) == n_chunks
        assert features.parent is not None and features.parent.span_id == root.span_id
        assert {s.context.trace_id for s in staged[req.request_id]} == {root.trace_id}
        for s in scorers:
            assert s.parent is not None and s.parent.span_id == features.context.span_id
            kids = _check_stage(spans, s, {"batch wait", "model"})
            (wait,), (model,) = kids["batch wait"], kids["model"]
            assert wait.end_time == model.start_time
        _check_stage(spans, features, {"feature plan"})
        agg_kids = _check_stage(spans, aggregator, {"aggregation"})
        scorer_ids = {s.context.span_id for s in scorers}
        assert aggregator.parent is not None and aggregator.parent.span_id in scorer_ids
        linked = {lk.context.span_id for lk in aggregator.links}
        assert linked | {aggregator.parent.span_id} == scorer_ids  # the other chunks: links
        assert agg_kids["aggregation"][0].end_time == aggregator.end_time
        # the result names the aggregator's span
        c = aggregator.context
        assert results[req.request_id][TRACEPARENT] == \
            f"00-{c.trace_id:032x}-{c.span_id:016x}-01".encode()
    assert max(chunks_seen) > 1  # some requests fanned out over several scorer spans
    schema = json.loads((CONTRACT / "headers.schema.json").read_text())
    for headers in results.values():  # the published contract describes them
        jsonschema.validate({k: v.decode("ascii") for k, v in headers.items()}, schema)


async def test_fused_spans_cover_every_step_with_the_client_as_parent(settings, exporter
                                                                      ) -> None:
    tracing, spans_out, client = exporter
    reqs = _requests(6, seed=4)
    roots = {r.request_id: client.start_span(CLIENT) for r in reqs}
    results = await _serve(settings, FUSED,
                           [(r, _traceparent(roots[r.request_id])) for r in reqs], tracing)
    spans = spans_out.get_finished_spans()
    staged = _by_request(spans)
    for req in reqs:
        (fused,) = staged[req.request_id]
        assert fused.name == "fused"
        assert fused.parent is not None
        assert fused.parent.span_id == roots[req.request_id].get_span_context().span_id
        _check_stage(spans, fused, {"feature plan", "batch wait", "model"})
        assert results[req.request_id][TRACEPARENT].split(b"-")[2] == \
            f"{fused.context.span_id:016x}".encode()


@pytest.mark.parametrize("roles", [THREE_HOPS, FUSED], ids=["three-roles", "fused"])
async def test_spans_agree_with_the_load_testers_stage_breakdown(settings, exporter, roles
                                                                 ) -> None:
    """Each request's time per stage and queue, as the load tester computes it from the
    result's ``ts.*`` stamps, equals its spans' within the stamps' 1 ms resolution."""
    tracing, spans_out, _ = exporter
    reqs = _requests(20, seed=5)
    results = await _serve(settings, roles, [(r, {}) for r in reqs], tracing)
    spans = spans_out.get_finished_spans()
    staged = _by_request(spans)
    by_id = {s.context.span_id: s for s in spans}
    stamps = np.array([stamps_of(results[r.request_id]) for r in reqs])
    durations = stage_durations(stamps)
    compared = 0
    for row, req in enumerate(reqs):
        mine = {s.name: s for s in staged[req.request_id]}
        from_spans: dict[str, float] = {}
        for stage in ("features", "scorer", "aggregator", "fused"):
            span = mine.get(stage)
            if stage == "scorer" and "aggregator" in mine:  # the chunk the result's stamps are of
                parent = mine["aggregator"].parent
                assert parent is not None
                span = by_id[parent.span_id]
            if span is None:
                continue
            (queue,) = _children(spans, span)["queue wait"]
            before = {"features": "queue before features", "scorer": "queue to scorer",
                      "aggregator": "queue to aggregator", "fused": "queue before fused"}
            from_spans[before[stage]] = _ms(queue.start_time, queue.end_time)
            from_spans[stage] = _ms(queue.end_time, span.end_time)
        assert set(from_spans) <= set(durations)
        for name, ms in from_spans.items():
            has, values = durations[name]
            assert has[row], (req.request_id, name)
            assert abs(values[row] - ms) < 1.0, (req.request_id, name, values[row], ms)
            compared += 1
    assert compared == len(reqs) * (6 if roles == THREE_HOPS else 2)


async def test_tracing_off_passes_the_trace_context_through(settings) -> None:
    reqs = _requests(3, seed=6)
    parent = b"00-" + b"12" * 16 + b"-" + b"34" * 8 + b"-01"
    results = await _serve(settings, THREE_HOPS, [(r, {TRACEPARENT: parent}) for r in reqs],
                           None)  # from the settings: no endpoint, so no tracer
    assert all(results[r.request_id][TRACEPARENT] == parent for r in reqs)
    assert Tracing.from_settings(settings.tracing).tracer is None


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


async def test_spans_are_exported_to_an_otlp_http_collector(settings) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = amended(settings, tracing={
            "otlp_endpoint": f"http://127.0.0.1:{server.server_port}/v1/traces",
            "sample_ratio": 1.0})
        reqs = _requests(4, seed=7)
        await _serve(settings, FUSED, [(r, {}) for r in reqs], None)  # exported at the end
    finally:
        server.shutdown()
    names: dict[str, int] = {}
    services = set()
    for body in _Collector.bodies:
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes
                         if a.key == "service.name"}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    names[span.name] = names.get(span.name, 0) + 1
    assert services == {"adstream"}
    assert names["fused"] == names["queue wait"] == names["feature plan"] == len(reqs)
    assert names["model"] >= len(reqs)


async def test_an_answer_at_the_deadline_gets_its_aggregator_spans(exporter) -> None:
    """A request one of whose two chunks never comes is answered ``partial`` by the
    deadline watcher: its stage span ends at that send, from the first chunk's wait."""
    tracing, spans_out, client = exporter
    agg = Aggregator(Settings())
    agg.tracer = tracing.tracer
    root = client.start_span(CLIENT)
    sent: list[Outgoing] = []

    async def send(msgs: list[Outgoing], source: object = None) -> None:
        sent.extend(msgs)

    chunk = ScoreChunk(request_id="r-late", chunk=0, n_chunks=2, n_candidates=2, top_k=1,
                       reply_to=None, deadline_ms=now_ms() + 150,
                       ad_id=np.array([7], np.int64), bid=np.ones(1, np.float32),
                       score=np.full(1, 0.5, np.float32))
    headers = {**_traceparent(root), "ts.scorer.out": str(now_ms()).encode()}
    record = Record("ads.scores", 0, 0, b"r-late", encode(chunk), headers, now_ms())
    async with asyncio.TaskGroup() as tg:
        await agg.open(tg, send)  # type: ignore[arg-type]
        begin_batch(time.time_ns())
        (held,) = await agg.handle([record])
        assert isinstance(held, Held) and held.send is None
        await asyncio.wait_for(asyncio.shield(held.until), 5)
        await agg.close()
    (answer,) = sent
    spans = spans_out.get_finished_spans()
    (stage,) = [s for s in spans if s.name == "aggregator"]
    assert stage.parent is not None and stage.parent.span_id == root.get_span_context().span_id
    assert (stage.attributes or {})["adstream.status"] == "partial"
    kids = _check_stage(spans, stage, {"aggregation"})
    assert kids["aggregation"][0].end_time == stage.end_time
    assert answer.headers[TRACEPARENT].split(b"-")[2] == \
        f"{stage.context.span_id:016x}".encode()


@pytest.mark.kafka
async def test_the_trace_crosses_a_real_kafka_broker(kafka_bootstrap, model_repo, exporter
                                                     ) -> None:
    """The same three-role trace through aiokafka: the traceparent survives Kafka's
    headers at every hop."""
    tracing, spans_out, client = exporter
    settings = amended(kafka_settings(kafka_bootstrap, model_repo), features={"chunk_rows": 64})
    reqs = _requests(3, seed=9)
    roots = {r.request_id: client.start_span(CLIENT) for r in reqs}
    results = await _serve(settings, THREE_HOPS,
                           [(r, _traceparent(roots[r.request_id])) for r in reqs], tracing)
    staged = _by_request(spans_out.get_finished_spans())
    for req in reqs:
        names = sorted(s.name for s in staged[req.request_id])
        n_chunks = -(-req.n_candidates // 64)
        assert names == ["aggregator", "features", *["scorer"] * n_chunks]
        (features,) = [s for s in staged[req.request_id] if s.name == "features"]
        assert features.parent is not None
        assert features.parent.span_id == roots[req.request_id].get_span_context().span_id
        (agg,) = [s for s in staged[req.request_id] if s.name == "aggregator"]
        assert results[req.request_id][TRACEPARENT].split(b"-")[2] == \
            f"{agg.context.span_id:016x}".encode()


def test_only_sampled_or_drawn_messages_get_a_stage_span(exporter) -> None:
    tracing, spans_out, _ = exporter
    assert tracing.tracer is not None
    sampled = b"00-" + b"12" * 16 + b"-" + b"34" * 8 + b"-01"
    for headers, ratio, traced in [({}, 0.0, False), ({}, 1.0, True),
                                   ({TRACEPARENT: sampled}, 0.0, True),
                                   ({TRACEPARENT: sampled[:-1] + b"0"}, 1.0, False),
                                   ({TRACEPARENT: b"garbage"}, 0.0, False),
                                   ({TRACEPARENT: b"garbage"}, 1.0, True)]:
        before = dict(headers)
        parent = parent_of(headers, ratio)
        assert (parent is not None) == traced, (before, ratio)
        if parent is None:
            continue
        span = stage_span(tracing.tracer, "features", headers, parent, start_ns=time.time_ns())
        assert span is not None
        span.end()
        c = span.get_span_context()
        written = headers[TRACEPARENT]
        assert written[:53] == f"00-{c.trace_id:032x}-{c.span_id:016x}-".encode()
        assert int(written[53:], 16) & 1  # sampled
        if before.get(TRACEPARENT) == sampled:
            assert f"{c.trace_id:032x}".encode() == sampled[3:35]
    assert len(spans_out.get_finished_spans()) == 3


async def test_an_unreachable_collector_neither_stops_answers_nor_holds_up_a_stop(settings
                                                                                 ) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = amended(settings, tracing={"otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces",
                                          "export_timeout_s": 0.5})
    reqs = _requests(4, seed=8)
    start = time.monotonic()
    results = await _serve(settings, FUSED, [(r, {}) for r in reqs], None)
    assert all(TRACEPARENT in results[r.request_id] for r in reqs)  # answered, traced
    assert time.monotonic() - start < 20


def test_an_endpoint_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint must be an http"):
        load_config(Settings, env={}, overrides=["tracing.otlp_endpoint=collector:4318"])
