"""The feature actor: ScoreRequest -> FeatureChunks (model inputs, a slice of candidates each)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.headers import CONTENT_TYPE, DEADLINE_MS, ORIGIN, TRACE_ID, carry, int_header, now_ms
from pipeline.actor import Result
from pipeline.timeslice import TimeSlice
from pipeline.tracing import BatchClock, child, current_batch, parent_of
from pipeline.transport.base import Outgoing, Record, Transport
from schemas.errors import SchemaError
from schemas.messages import FeatureChunk, ScoreRequest, encode, peek_request, schema_name
from schemas.request_batch import RequestBatch, decode_requests
from workers.features.spec import FeaturePipeline
from workers.replies import DeadLettering, status_result
from workers.request_ids import Origin
from workers.settings import Settings
from workers.spans import FEATURE_PLAN, open_stage, record_attributes

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

CHUNK_SCHEMA = schema_name(FeatureChunk.TYPE)
OFF_LOOP_ROWS = 2048  # a plan call over this many rows (~1 ms) runs in a thread, off the loop
DECODE_STEP = 16  # requests decoded in one pass between yields to the loop (~0.5 ms)


class FeatureActor(DeadLettering):
    name = "features"
    ordered = True

    def __init__(self, settings: Settings, pipeline: FeaturePipeline, transport: Transport) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.transport = transport
        self._topics_seen: dict[str, bool] = {settings.topics.results: True}
        self.expired = 0
        self.rejected_count = 0  # requests answered `rejected`

    async def _topic_exists(self, topic: str) -> bool:
        if topic not in self._topics_seen:
            self._topics_seen[topic] = await self.transport.partitions(topic) > 0
        return self._topics_seen[topic]

    def reply_topic(self, reply_to: str | None) -> str:
        return reply_to or self.settings.topics.results

    async def handle(self, records: Sequence[Record]) -> list[Result]:
        results, live, plan = await self.prepare(records)
        clock = current_batch() if self.tracer is not None else None
        traced = self.trace(self.tracer, clock, records, live, self.parents(live), plan) \
            if self.tracer is not None and clock is not None else []
        by_user = self.settings.features.key == "user"
        topic, step = self.settings.topics.features, self.settings.features.chunk_rows
        slice_ = TimeSlice()
        for item in live:
            await slice_.check()
            req, n = item.request, item.request.n_candidates
            n_chunks = (n + step - 1) // step
            ad_id, bid = ads_of(req)
            out = []
            for c in range(n_chunks):
                sl = slice(c * step, (c + 1) * step)
                chunk = FeatureChunk(
                    request_id=req.request_id, chunk=c, n_chunks=n_chunks, n_candidates=n,
                    top_k=req.top_k, reply_to=req.reply_to, deadline_ms=item.deadline_ms,
                    priority=req.priority, user_id=req.user_id or None,
                    ad_id=ad_id[sl], bid=bid[sl],
                    dense=item.dense[sl], sparse=item.sparse[sl])
                key = records[item.index].key if by_user else \
                    f"{req.request_id}:{c}".encode()
                out.append(Outgoing(topic, encode(chunk), key=key, headers=dict(item.headers)))
            results[item.index] = out
        if clock is not None:
            clock.end_when_sent([span for _, span in traced])
        return results

    def parents(self, live: list[Prepared]) -> list[Context | None]:
        """What each live request's stage span is a child of; None: not traced (a request
        without a traceparent starts a trace at ``tracing.sample_ratio``)."""
        ratio = self.settings.tracing.sample_ratio
        return [parent_of(item.headers, ratio) for item in live]

    def trace(self, tracer: Tracer, clock: BatchClock, records: Sequence[Record],
              live: list[Prepared], parents: list[Context | None], plan: tuple[int, int],
              stage: str | None = None) -> list[tuple[Prepared, Span]]:
        """The stage spans of the batch's traced requests (their ``queue wait`` and
        ``feature plan`` children done); each one's output headers now name its span.
        The caller ends them when the batch is sent."""
        spans = []
        for item, parent in zip(live, parents, strict=True):
            if parent is None:
                continue
            rec = records[item.index]
            attributes = {**record_attributes(rec, item.request.request_id),
                          "adstream.candidates": item.request.n_candidates}
            span = open_stage(tracer, stage or self.name, item.headers, parent,
                              clock.received_ns, fallback_ms=rec.timestamp_ms,
                              attributes=attributes)
            if span is not None:
                child(tracer, span, FEATURE_PLAN, *plan)
                spans.append((item, span))
        return spans

    async def prepare(self, records: Sequence[Record]
                      ) -> tuple[list[Result], list[Prepared], tuple[int, int]]:
        """Decode ``records`` and compute every live request's model inputs in one plan
        call. Returns one Result per record, filled for those already answered (expired)
        or failed, the live requests with their inputs, and when the plan call started
        and ended (epoch ns)."""
        results: list[Result] = [[] for _ in records]
        wall_ms = now_ms()
        slice_ = TimeSlice()
        pending: list[int] = []  # records not already past their deadline
        for i, rec in enumerate(records):
            await slice_.check()
            late = await self._expired_early(rec, wall_ms)
            if late is not None:
                results[i] = [late]
            else:
                pending.append(i)
        parts = []  # decoded DECODE_STEP requests at a time (~0.3 ms), yielding between
        limit = self.settings.actor.max_message_bytes
        for at in range(0, len(pending), DECODE_STEP):
            await slice_.check()
            step = [records[i] for i in pending[at:at + DECODE_STEP]]
            parts.append(decode_requests([r.value for r in step],
                                         [r.headers.get(CONTENT_TYPE) for r in step],
                                         max_bytes=limit))
        batch = RequestBatch.join(parts)
        live: list[Prepared] = []
        for i, got in zip(pending, batch.requests, strict=True):
            try:
                decoded = await self._admit(records[i], got, wall_ms)
            except Exception as e:  # that record's reason, for its dead letter
                results[i] = e
                continue
            if isinstance(decoded, Outgoing):
                results[i] = [decoded]
            else:
                live.append(Prepared(i, *decoded))
        # the joined columns are those of every decoded request: usable when all are live
        n_decoded = sum(isinstance(r, ScoreRequest) for r in batch.requests)
        joined = batch.columns if len(live) == n_decoded else None
        plan_start = plan_end = 0
        if live:
            plan_start = time.time_ns()
            if sum(p.request.n_candidates for p in live) >= OFF_LOOP_ROWS:
                await asyncio.to_thread(self._features, live, results, joined)
            else:
                self._features(live, results, joined)
            plan_end = time.time_ns()
            live = [p for p in live if not isinstance(results[p.index], Exception)]
        return results, live, (plan_start, plan_end)

    def _features(self, live: list[Prepared], results: list[Result],
                  joined: Mapping[str, np.ndarray] | None = None) -> None:
        """Fill ``dense``/``sparse`` of each live request from one plan call over all of
        them; when that call fails, request by request, to fail only the bad one."""
        try:
            dense, sparse = self.pipeline.batch([p.request for p in live], joined)
        except SchemaError:
            for p in live:
                try:
                    p.dense, p.sparse = self.pipeline.batch([p.request])
                except SchemaError as e:
                    e.request_id, e.reply_to = p.request.request_id, p.request.reply_to
                    results[p.index] = e
            return
        at = 0
        for p in live:
            n = p.request.n_candidates
            p.dense, p.sparse = dense[at:at + n], sparse[at:at + n]
            at += n

    async def _admit(self, record: Record, req: ScoreRequest | Exception, wall_ms: float
                     ) -> tuple[ScoreRequest, dict[str, bytes], int] | Outgoing:
        """The decoded request with its output headers and deadline, or its ``expired``
        reply; raises what refuses it (its decoding's error, a missing reply topic, too
        many candidates)."""
        if isinstance(req, Exception):
            if isinstance(req, SchemaError) and req.reply_to:
                await self._topic_exists(req.reply_to)  # so `rejected` can answer there
            raise req
        if req.reply_to is not None and not await self._topic_exists(req.reply_to):
            raise SchemaError("reply_to", f"topic {req.reply_to!r} does not exist",
                              request_id=req.request_id)
        n = req.n_candidates
        if n > self.settings.features.max_candidates:
            raise SchemaError("candidates", f"{n} candidates exceed the limit of "
                              f"{self.settings.features.max_candidates}", request_id=req.request_id,
                              reply_to=req.reply_to)
        deadline = (int_header(record.headers, DEADLINE_MS) or req.deadline_ms
                    or record.timestamp_ms + self.settings.features.default_timeout_ms)
        headers = carry(record.headers, CHUNK_SCHEMA)
        headers[ORIGIN] = Origin.of(record).header()  # what tells a reused id downstream
        headers[DEADLINE_MS] = str(deadline).encode()
        headers.setdefault(TRACE_ID, req.request_id.encode())
        if deadline <= wall_ms:
            return self._expired(req.request_id, req.reply_to, n, headers)
        return req, headers, deadline

    async def _expired_early(self, record: Record, wall_ms: float) -> Outgoing | None:
        """The ``expired`` reply for a request whose deadline header has passed, read from
        its envelope alone: under overload most of the backlog is shed here, so this path
        skips validating the columns (a tenth of the cost of a full decode)."""
        deadline = int_header(record.headers, DEADLINE_MS)
        if deadline is None or deadline > wall_ms:
            return None
        addr = peek_request(record.value, max_bytes=self.settings.actor.max_message_bytes,
                            content_type=record.headers.get(CONTENT_TYPE))
        if addr is None or (addr.reply_to is not None
                            and not await self._topic_exists(addr.reply_to)):
            return None  # the full decode names what is wrong
        headers = dict(record.headers)
        headers[ORIGIN] = Origin.of(record).header()
        headers.setdefault(TRACE_ID, addr.request_id.encode())
        return self._expired(addr.request_id, addr.reply_to, addr.n_candidates, headers)

    def _expired(self, request_id: str, reply_to: str | None, n_candidates: int,
                 headers: dict[str, bytes]) -> Outgoing:
        self.expired += 1
        return status_result(request_id, "expired", self.reply_topic(reply_to),
                             reason="deadline passed before feature extraction",
                             n_candidates=n_candidates, headers=headers)

    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        """The dead letter, and a ``rejected`` answer when the request can be addressed."""
        out = super().dead_letter(record, error)
        if isinstance(error, SchemaError) and error.request_id:
            topic = self.settings.topics.results
            if error.reply_to and self._topics_seen.get(error.reply_to):
                topic = error.reply_to
            self.rejected_count += 1
            out.append(status_result(error.request_id, "rejected", topic, reason=error.reason,
                                     headers=record.headers))
        return out


def ads_of(req: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
    """A request's ad ids (int64) and bids (float32): number columns, as decoding checked."""
    ad_id, bid = req.candidates["ad_id"], req.candidates["bid"]
    assert isinstance(ad_id, np.ndarray) and isinstance(bid, np.ndarray)
    return ad_id.astype("<i8", copy=False), bid.astype("<f4", copy=False)


@dataclass(slots=True)
class Prepared:
    """A live request of a batch: its record's index, output headers and model inputs."""

    index: int
    request: ScoreRequest
    headers: dict[str, bytes]
    deadline_ms: int
    dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sparse: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
