"""Stage fusion: feature extraction inside the scoring process, without the Kafka hop.

The fused role consumes ScoreRequests and produces ScoreChunks, running the feature actor's
and the scoring worker's own code back to back (features -> dynamic batcher). It trades
independent scaling of the two stages for one hop less of latency and broker load; the
three-hop topology stays the default.
"""

from __future__ import annotations

import asyncio

from pipeline.actor import Emit, Handler
from pipeline.transport.base import TP, Outgoing, Record
from workers.feature_actor import FeatureActor
from workers.scorer import ScoringWorker


class FusedFeaturesScorer(Handler):
    name = "fused"
    ordered = True

    def __init__(self, features: FeatureActor, scorer: ScoringWorker) -> None:
        self.features = features
        self.scorer = scorer

    async def open(self, tg: asyncio.TaskGroup, emit: Emit) -> None:
        await self.scorer.open(tg, emit)

    async def close(self) -> None:
        await self.scorer.close()

    async def handle(self, record: Record) -> list[Outgoing]:
        made = await self.features.chunks(record)
        if isinstance(made, Outgoing):
            return [made]
        chunks, headers = made
        key = record.key if self.features.s.features.key == "user" else None
        return list(await asyncio.gather(*(self.scorer.score_chunk(c, headers, key)
                                           for c in chunks)))

    def revoked(self, tps: set[TP]) -> None:
        self.features.revoked(tps)

    def dead_letter(self, record: Record, error: Exception) -> Outgoing:
        return self.features.dead_letter(record, error)

    def rejected(self, record: Record, error: Exception) -> list[Outgoing]:
        return self.features.rejected(record, error)
