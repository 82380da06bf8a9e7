"""The feature actor: ScoreRequest -> FeatureChunks (model inputs, a slice of candidates each)."""

from __future__ import annotations

import time

from pipeline import headers as H
from pipeline.actor import Handler
from pipeline.transport.base import Outgoing, Record, Transport
from schemas.errors import SchemaError
from schemas.messages import (
    FeatureChunk,
    ScoreRequest,
    decode,
    encode,
    peek_request,
    schema_name,
)
from workers.features import FeaturePipeline
from workers.replies import dead_letter, status_result
from workers.settings import Settings

CHUNK_SCHEMA = schema_name(FeatureChunk.TYPE)


class FeatureActor(Handler):
    name = "features"
    ordered = True

    def __init__(self, settings: Settings, pipeline: FeaturePipeline, transport: Transport) -> None:
        self.s = settings
        self.pipeline = pipeline
        self.transport = transport
        self._topics_seen: dict[str, bool] = {settings.topics.results: True}
        self.expired = 0
        self.rejected_count = 0  # requests answered `rejected`

    async def _topic_exists(self, topic: str) -> bool:
        if topic not in self._topics_seen:
            self._topics_seen[topic] = await self.transport.partitions(topic) > 0
        return self._topics_seen[topic]

    def _reply_topic(self, reply_to: str | None) -> str:
        return reply_to or self.s.topics.results

    async def handle(self, record: Record) -> list[Outgoing]:
        made = await self.chunks(record)
        if isinstance(made, Outgoing):
            return [made]
        chunks, headers = made
        out_headers = H.carry(headers, CHUNK_SCHEMA)
        by_user = self.s.features.key == "user"
        return [Outgoing(self.s.topics.features, encode(c),
                         key=record.key if by_user else f"{c.request_id}:{c.chunk}".encode(),
                         headers=out_headers)
                for c in chunks]

    async def chunks(self, record: Record) -> tuple[list[FeatureChunk], dict[str, bytes]] | Outgoing:
        """The request's FeatureChunks and their headers, or the ``expired`` reply."""
        late = await self._expired_early(record)
        if late is not None:
            return late
        try:
            req = decode(record.value, ScoreRequest, max_bytes=self.s.actor.max_message_bytes)
        except SchemaError as e:
            if e.reply_to:  # learn whether it exists, so `rejected` can answer there
                await self._topic_exists(e.reply_to)
            raise
        if req.reply_to is not None and not await self._topic_exists(req.reply_to):
            raise SchemaError("reply_to", f"topic {req.reply_to!r} does not exist",
                              request_id=req.request_id)
        n = req.n_candidates
        if n > self.s.features.max_candidates:
            raise SchemaError("candidates", f"{n} candidates exceed the limit of "
                              f"{self.s.features.max_candidates}", request_id=req.request_id,
                              reply_to=req.reply_to)
        deadline = (H.int_header(record.headers, H.DEADLINE_MS) or req.deadline_ms
                    or record.timestamp_ms + self.s.features.default_timeout_ms)
        headers = dict(record.headers)
        headers[H.DEADLINE_MS] = str(deadline).encode()
        headers.setdefault(H.TRACE_ID, req.request_id.encode())
        if deadline <= time.time() * 1000:
            return self._expired(req.request_id, req.reply_to, n, headers)
        try:
            dense, sparse = self.pipeline(req)
        except SchemaError as e:
            e.request_id, e.reply_to = req.request_id, req.reply_to
            raise
        step = self.s.features.chunk_rows
        n_chunks = (n + step - 1) // step
        bid = req.candidates["bid"].astype("<f4", copy=False)
        ad_id = req.candidates["ad_id"].astype("<i8", copy=False)
        chunks = []
        for i in range(n_chunks):
            sl = slice(i * step, (i + 1) * step)
            chunks.append(FeatureChunk(
                request_id=req.request_id, chunk=i, n_chunks=n_chunks, n_candidates=n,
                top_k=req.top_k, reply_to=req.reply_to, deadline_ms=deadline,
                priority=req.priority,
                ad_id=ad_id[sl], bid=bid[sl], dense=dense[sl], sparse=sparse[sl],
            ))
        return chunks, headers

    async def _expired_early(self, record: Record) -> Outgoing | None:
        """The ``expired`` reply for a request whose deadline header has passed, read from
        its envelope alone: under overload most of the backlog is shed here, so this path
        skips validating the columns (a tenth of the cost of a full decode)."""
        deadline = H.int_header(record.headers, H.DEADLINE_MS)
        if deadline is None or deadline > time.time() * 1000:
            return None
        addr = peek_request(record.value, max_bytes=self.s.actor.max_message_bytes)
        if addr is None or (addr.reply_to is not None
                            and not await self._topic_exists(addr.reply_to)):
            return None  # the full decode names what is wrong
        headers = dict(record.headers)
        headers.setdefault(H.TRACE_ID, addr.request_id.encode())
        return self._expired(addr.request_id, addr.reply_to, addr.n_candidates, headers)

    def _expired(self, request_id: str, reply_to: str | None, n_candidates: int,
                 headers: dict[str, bytes]) -> Outgoing:
        self.expired += 1
        return status_result(request_id, "expired", self._reply_topic(reply_to),
                             reason="deadline passed before feature extraction",
                             n_candidates=n_candidates, headers=headers)

    def dead_letter(self, record: Record, error: Exception) -> Outgoing:
        return dead_letter(record, error, self.name, self.s.topics.dlq)

    def rejected(self, record: Record, error: Exception) -> list[Outgoing]:
        if not isinstance(error, SchemaError) or not error.request_id:
            return []
        topic = self.s.topics.results
        if error.reply_to and self._topics_seen.get(error.reply_to):
            topic = error.reply_to
        self.rejected_count += 1
        return [status_result(error.request_id, "rejected", topic, reason=error.reason,
                              headers=record.headers)]
