"""The aggregator: a request's ScoreChunks -> ranked top-K ScoreResult, once.

All chunks of a request arrive on one partition (keyed by request id). The request is
answered when its last chunk arrives, or at its deadline with what it has (``partial``,
or ``expired`` when nothing was scored). Duplicate chunks (redelivery after a crash or
rebalance) are dropped by (request id, chunk index), and a finished request's id is
remembered so late duplicates do not answer it twice. Input records stay in flight until
the result is acknowledged, so their offsets are committed only after the answer is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.headers import TRACEPARENT, carry, int_header, now_ms, stage_in
from pipeline.actor import Held, PartitionLost, Result, Send
from pipeline.timeslice import TimeSlice
from pipeline.tracing import BatchClock, current_batch, link, parent_of
from pipeline.transport.base import TP, Outgoing, Record, Transport
from schemas.messages import ScoreChunk, ScoreResult, decode, schema_name
from workers.aggregation.ranking import rank
from workers.replies import DeadLettering, result_message, status_result
from workers.request_ids import Origin, RequestIds, Seen
from workers.settings import Settings
from workers.spans import AGGREGATION, open_stage

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

RESULT_SCHEMA = schema_name(ScoreResult.TYPE)


@dataclass
class _Pending:
    request_id: str
    n_chunks: int
    n_candidates: int
    top_k: int
    reply_to: str | None
    deadline_ms: int | None
    headers: dict[str, bytes]
    partition: int
    chunks: dict[int, ScoreChunk] = field(default_factory=dict)
    answered: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    finishing: bool = False
    status: str = ""  # how it was answered
    # traced: the traceparents of the chunks after the first (the first's is in headers)
    others: list[dict[str, bytes]] | None = None


class Aggregator(DeadLettering):
    name = "aggregator"
    holds = True

    def __init__(self, settings: Settings, transport: Transport | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.exactly_once = settings.actor.delivery == "exactly_once"
        # at-least-once: a partition's answers go out in the order its records completed
        # them (per-user order with features.key = "user"). Exactly-once keeps them
        # unordered: with ordered sends its SIGKILL fault test lost answers in one run, a
        # bug not found yet (closing note of stop 10)
        self.ordered = not self.exactly_once
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[int, str]] = []
        # answered request id -> its partition; an answer that is never acknowledged (its
        # send refused or failed) leaves again, so the replay of its chunks answers it
        self._done: OrderedDict[str, int] = OrderedDict()
        self._send: Send | None = None
        self._closing = asyncio.Event()
        self._wake = asyncio.Event()  # an earlier deadline arrived, or closing
        self.counts = {"ok": 0, "partial": 0, "expired": 0, "duplicates": 0, "reused": 0}
        self._ids = RequestIds(settings.aggregator.dedupe_capacity)

    async def open(self, tg: asyncio.TaskGroup, send: Send) -> None:
        self._send = send
        tg.create_task(self._watch_deadlines())

    async def close(self) -> None:
        self._closing.set()
        self._wake.set()

    async def handle(self, records: Sequence[Record]) -> list[Result]:
        limit = self.settings.actor.max_message_bytes
        results: list[Result] = []
        slice_ = TimeSlice()
        clock = current_batch() if self.tracer is not None else None
        for rec in records:
            await slice_.check()
            try:
                chunk = decode(rec.value, ScoreChunk, max_bytes=limit)
            except Exception as e:  # that record's reason, for its dead letter
                results.append(e)
                continue
            results.append(self._take(rec, chunk, clock))
        return results

    def _take(self, record: Record, chunk: ScoreChunk, clock: BatchClock | None) -> Result:
        """Add ``chunk`` to its request; the record that completes the request carries the
        answer, and every record of the request is done once the answer is acknowledged.
        ``clock``: the batch's, when traced."""
        rid = chunk.request_id
        origin = Origin.from_headers(record.headers)
        seen = self._ids.check(rid, origin)
        if seen is Seen.REUSED:  # another request with an id in use: say so, once
            self.counts["reused"] += 1
            return [status_result(rid, "rejected", chunk.reply_to or self.settings.topics.results,
                                  reason=self._ids.reason(rid, origin),
                                  n_candidates=chunk.n_candidates, headers=record.headers)]
        if seen is Seen.REUSED_REPEAT or rid in self._done:
            self.counts["duplicates"] += 1
            return []
        p = self._pending.get(rid)
        if p is None:
            p = _Pending(rid, chunk.n_chunks, chunk.n_candidates, chunk.top_k, chunk.reply_to,
                         chunk.deadline_ms, carry(record.headers, RESULT_SCHEMA),
                         record.partition)
            self._pending[rid] = p
            if p.deadline_ms is not None:
                if not self._deadlines or p.deadline_ms < self._deadlines[0][0]:
                    self._wake.set()
                heapq.heappush(self._deadlines, (p.deadline_ms, rid))
        if chunk.chunk in p.chunks or p.finishing:
            self.counts["duplicates"] += 1
            return []  # its twin, already taken, is the record that waits
        if clock is not None and p.chunks and TRACEPARENT in record.headers:
            if p.others is None:
                p.others = []
            p.others.append({TRACEPARENT: record.headers[TRACEPARENT]})
        p.chunks[chunk.chunk] = chunk
        p.headers[stage_in(self.name)] = str(now_ms()).encode()
        if len(p.chunks) == p.n_chunks:
            if self.tracer is None or clock is None:
                return Held(p.answered, send=self._answer(p, deadline_passed=False))
            spans = self._trace(self.tracer, p, clock.received_ns)
            send = self._answer(p, deadline_passed=False)
            for span in spans:
                span.set_attribute("adstream.status", p.status)
            clock.end_when_sent(spans)
            return Held(p.answered, send=send)
        return Held(p.answered)

    def _trace(self, tracer: Tracer, p: _Pending, received_ns: int) -> list[Span]:
        """The stage span of ``p``'s answer (child of its first chunk's scorer span, linked
        to the others') and its ``aggregation`` child from ``received_ns``, both to be ended
        when the answer is sent; ``p``'s headers now name the stage span. ``queue wait``
        covers the wait for the request's other chunks."""
        parent = parent_of(p.headers, 0.0)
        if parent is None:
            return []
        links = [lk for h in p.others or () if (lk := link(h)) is not None]
        span = open_stage(tracer, self.name, p.headers, parent, received_ns,
                          fallback_ms=received_ns // 1_000_000,
                          attributes={"adstream.request_id": p.request_id,
                                      "adstream.chunks": p.n_chunks,
                                      "messaging.system": "kafka",
                                      "messaging.destination.partition.id": str(p.partition)},
                          links=links)
        if span is None:
            return []
        from opentelemetry import trace

        aggregation = tracer.start_span(AGGREGATION, context=trace.set_span_in_context(span),
                                        start_time=received_ns)
        return [aggregation, span]

    async def assigned(self, tps: set[TP]) -> None:
        """Exactly-once: learn which requests of these partitions were already answered (in
        committed transactions) from the changelog, so replayed chunks do not answer again."""
        if not self.exactly_once or self.transport is None:
            return
        parts = {tp.partition for tp in tps if tp.topic == self.settings.topics.scores}
        consumer = self.transport.consumer([self.settings.topics.changelog], None,
                                           read_committed=True)
        await consumer.start()
        try:
            wanted = {TP(self.settings.topics.changelog, p) for p in parts}
            records = await consumer.read_to_end(wanted)
        finally:
            await consumer.stop()
        for rec in records:
            if rec.key is not None:
                self._done[rec.key.decode()] = rec.partition
                self._ids.remember(rec.key.decode(), Origin.parse(rec.value))
        while len(self._done) > self.settings.aggregator.dedupe_capacity:
            self._done.popitem(last=False)

    def revoked(self, tps: set[TP]) -> None:
        """Forget unanswered requests of revoked partitions: their chunks are uncommitted, so
        the partitions' new owner reads them again and answers once."""
        parts = {tp.partition for tp in tps if tp.topic == self.settings.topics.scores}
        for rid, p in list(self._pending.items()):
            if p.partition in parts and not p.finishing:
                del self._pending[rid]
                p.answered.cancel()
        if self.exactly_once:
            # an acknowledged answer may still sit in a transaction that gets aborted (a
            # fenced or stalled member): the changelog, read again on assignment, is what
            # was answered; what this member remembers of these partitions is not
            for rid in [r for r, part in self._done.items() if part in parts]:
                del self._done[rid]

    def _answer(self, p: _Pending, *, deadline_passed: bool) -> list[Outgoing]:
        """The ScoreResult of ``p`` (and its changelog entry when exactly-once); from here
        on ``p`` counts as answered."""
        p.finishing = True
        scored = [c for c in p.chunks.values() if c.status == "ok"]
        n_scored = sum(len(c.score) for c in scored)
        if n_scored == 0:
            status = "expired"
        elif n_scored < p.n_candidates or deadline_passed:
            status = "partial"
        else:
            status = "ok"
        p.status = status
        if scored:
            ad_id = np.concatenate([c.ad_id for c in scored])
            bid = np.concatenate([c.bid for c in scored])
            score = np.concatenate([c.score for c in scored])
            top = rank(ad_id, bid, score, p.top_k)
            ad_id, bid, score = ad_id[top], bid[top], score[top]
        else:
            ad_id, bid, score = (np.zeros(0, np.int64), np.zeros(0, np.float32),
                                 np.zeros(0, np.float32))
        labelled = [c for c in scored if c.model_version is not None]
        last = max(labelled, key=lambda c: c.model_version or 0) if labelled else None
        result = ScoreResult(p.request_id, status, ad_id=ad_id, bid=bid, score=score,
                             n_candidates=p.n_candidates, n_scored=n_scored,
                             reason="deadline passed" if status != "ok" else None,
                             model=last.model if last else None,
                             model_version=last.model_version if last else None)
        msgs = [result_message(result, p.reply_to or self.settings.topics.results, p.headers)]
        if self.exactly_once:  # the answer and its changelog entry commit together
            first = self._ids.first(p.request_id)
            msgs.append(Outgoing(self.settings.topics.changelog, first.header() if first else b"",
                                 key=p.request_id.encode(),
                                 partition=p.partition))
        self.counts[status] += 1
        del self._pending[p.request_id]
        self._done[p.request_id] = p.partition
        p.answered.add_done_callback(functools.partial(self._sent, p.request_id))
        while len(self._done) > self.settings.aggregator.dedupe_capacity:
            self._done.popitem(last=False)
        return msgs

    def _sent(self, request_id: str, answered: asyncio.Future[None]) -> None:
        """An answer that was not acknowledged does not count as answered."""
        if answered.cancelled() or answered.exception() is not None:
            self._done.pop(request_id, None)

    async def _watch_deadlines(self) -> None:
        """Answer requests whose deadline passed with what they have, through the actor's
        send path; sleeps until the earliest deadline (or an earlier one arrives)."""
        tick = self.settings.aggregator.tick_ms / 1000
        while not self._closing.is_set():
            now = now_ms()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, rid = heapq.heappop(self._deadlines)
                p = self._pending.get(rid)
                if p is None or p.finishing:
                    continue
                spans: list[Span] = []
                if self.tracer is not None:  # from the last chunk's arrival
                    taken_ms = int_header(p.headers, stage_in(self.name)) or now_ms()
                    spans = self._trace(self.tracer, p, taken_ms * 1_000_000)
                msgs = self._answer(p, deadline_passed=True)
                try:
                    assert self._send is not None
                    if spans:
                        sent_ns = time.time_ns()
                        for span in spans:
                            span.set_attribute("adstream.status", p.status)
                            span.end(end_time=sent_ns)
                    await self._send(msgs, TP(self.settings.topics.scores, p.partition))
                except PartitionLost:
                    p.answered.cancel()  # the partition's new owner answers
                    continue
                except BaseException as e:
                    p.answered.set_exception(e)
                    raise
                p.answered.set_result(None)
            wait = (self._deadlines[0][0] - now_ms()) / 1000 if self._deadlines \
                else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(tick, wait))
