"""Stage fusion, one hop: requests in, ranked answers out, in one process.

The fused role consumes ScoreRequests and answers them itself: the feature actor's plan
over every request of a fetch, the scoring worker's dynamic batcher, then top-K and the
ScoreResult, with no ``ads.features`` or ``ads.scores`` traffic and no aggregator (every
candidate of a request is scored here). It trades independent scaling of the stages for
two hops less of latency and broker load; the three-hop topology stays the default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.actor import Handler, Result, Send
from pipeline.admin import AdminHandler
from pipeline.timeslice import TimeSlice
from pipeline.tracing import current_batch
from pipeline.transport.base import TP, Outgoing, Record
from schemas.messages import ScoreResult
from workers.aggregation.ranking import rank
from workers.features.actor import FeatureActor, Prepared, ads_of
from workers.replies import result_message
from workers.scoring.scorer import Rows, ScoringWorker
from workers.spans import model_steps


class FusedFeaturesScorer(Handler):
    name = "fused"
    ordered = True

    def __init__(self, features: FeatureActor, scorer: ScoringWorker) -> None:
        self.features = features
        self.scorer = scorer

    async def open(self, tg: asyncio.TaskGroup, send: Send) -> None:
        await self.scorer.open(tg, send)

    async def close(self) -> None:
        await self.scorer.close()

    async def handle(self, records: Sequence[Record]) -> list[Result]:
        results, live, plan = await self.features.prepare(records)
        if not live:
            return results
        parts = [Rows(p.dense, p.sparse, p.deadline_ms, p.request.priority, p.request.user_id)
                 for p in live]
        clock = current_batch() if self.tracer is not None else None
        parents = self.features.parents(live) if clock is not None else []
        if self.tracer is None or clock is None or all(c is None for c in parents):
            scores, versions = await self.scorer.score(parts)
        else:
            scores, versions, timings = await self.scorer.score_timed(parts)
            # the request's stage span, in its headers before the answer copies them
            traced = self.features.trace(self.tracer, clock, records, live, parents, plan,
                                         self.name)
            timing_of = {p.index: t for p, t in zip(live, timings, strict=True)}
            for p, span in traced:
                model_steps(self.tracer, span, timing_of[p.index])
            clock.end_when_sent([span for _, span in traced])
        slice_ = TimeSlice()
        for p, sc, v in zip(live, scores, versions, strict=True):
            await slice_.check()
            results[p.index] = [self._answer(p, sc, v)]
        return results

    def _answer(self, p: Prepared, scores: np.ndarray, version: int) -> Outgoing:
        """The ranked ScoreResult of a request whose candidates were all scored here."""
        req = p.request
        ad_id, bid = ads_of(req)
        top = rank(ad_id, bid, scores, req.top_k)
        result = ScoreResult(req.request_id, "ok", ad_id=ad_id[top], bid=bid[top],
                             score=scores[top].astype(np.float32, copy=False),
                             n_candidates=req.n_candidates, n_scored=req.n_candidates,
                             model=self.scorer.models.name, model_version=version)
        return result_message(result, self.features.reply_topic(req.reply_to), p.headers)

    def admin_routes(self) -> Mapping[str, AdminHandler]:
        return self.scorer.admin_routes()

    def revoked(self, tps: set[TP]) -> None:
        self.features.revoked(tps)

    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        return self.features.dead_letter(record, error)
