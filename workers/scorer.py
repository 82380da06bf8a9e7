"""The scoring worker: FeatureChunks from many requests -> one model batch -> ScoreChunks."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from pipeline import headers as H
from pipeline.actor import Emit, Handler
from pipeline.batcher import DynamicBatcher
from pipeline.transport.base import Outgoing, Record
from schemas.errors import SchemaError
from schemas.messages import FeatureChunk, ScoreChunk, decode, encode, schema_name
from workers.replies import dead_letter
from workers.settings import Settings

SCORE_SCHEMA = schema_name(ScoreChunk.TYPE)


class ScoringWorker(Handler):
    name = "scorer"
    ordered = True

    def __init__(self, settings: Settings, batcher: DynamicBatcher, n_dense: int,
                 n_sparse: int) -> None:
        self.s = settings
        self.batcher = batcher
        self.n_dense = n_dense
        self.n_sparse = n_sparse
        self.expired = 0

    async def open(self, tg: asyncio.TaskGroup, emit: Emit) -> None:
        tg.create_task(self.batcher.run())

    async def close(self) -> None:
        self.batcher.close()

    async def handle(self, record: Record) -> list[Outgoing]:
        chunk = decode(record.value, FeatureChunk, max_bytes=self.s.actor.max_message_bytes)
        key = record.key if self.s.features.key == "user" else None
        return [await self.score_chunk(chunk, record.headers, key)]

    async def score_chunk(self, chunk: FeatureChunk, headers: dict[str, bytes],
                          key: bytes | None = None) -> Outgoing:
        """Score one chunk in some batch (or mark it expired); the ScoreChunk to produce."""
        self._check_shapes(chunk)
        out = ScoreChunk(
            request_id=chunk.request_id, chunk=chunk.chunk, n_chunks=chunk.n_chunks,
            n_candidates=chunk.n_candidates, top_k=chunk.top_k, reply_to=chunk.reply_to,
            deadline_ms=chunk.deadline_ms,
        )
        now_ms = time.time() * 1000
        if chunk.deadline_ms is not None and chunk.deadline_ms <= now_ms:
            self.expired += 1
            out.status = "expired"
        else:
            deadline = None
            if chunk.deadline_ms is not None:
                deadline = time.monotonic() + (chunk.deadline_ms - now_ms) / 1000
            scores = await self.batcher.submit(chunk.dense, chunk.sparse, deadline=deadline,
                                               priority=chunk.priority)
            out.ad_id, out.bid, out.score = chunk.ad_id, chunk.bid, scores.astype(np.float32)
        return Outgoing(self.s.topics.scores, encode(out), key=key or chunk.request_id.encode(),
                        headers=H.carry(headers, SCORE_SCHEMA))

    def _check_shapes(self, chunk: FeatureChunk) -> None:
        if chunk.dense.shape[1] != self.n_dense:
            raise SchemaError("dense", f"{chunk.dense.shape[1]} columns, the model takes "
                              f"{self.n_dense}", request_id=chunk.request_id)
        if chunk.sparse.shape[1] != self.n_sparse:
            raise SchemaError("sparse", f"{chunk.sparse.shape[1]} columns, the model takes "
                              f"{self.n_sparse}", request_id=chunk.request_id)
        if chunk.ad_id.shape[0] > self.batcher.max_rows:
            raise SchemaError("ad_id", f"{chunk.ad_id.shape[0]} rows exceed the batch limit "
                              f"{self.batcher.max_rows}", request_id=chunk.request_id)

    def dead_letter(self, record: Record, error: Exception) -> Outgoing:
        return dead_letter(record, error, self.name, self.s.topics.dlq)
