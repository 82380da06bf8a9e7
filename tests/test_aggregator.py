"""The aggregator's memory of answered requests: only an acknowledged answer counts, so the
replay of a request whose answer was never sent (or, exactly-once, sat in a transaction
that may be aborted) is answered, not dropped as a duplicate."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.actor import Held
from pipeline.config import amended
from pipeline.transport.base import TP, Record
from schemas.messages import ScoreChunk, encode
from workers.aggregation.aggregator import Aggregator
from workers.settings import Settings


def _records(settings: Settings, request_id: str, n_chunks: int, first_offset: int,
             partition: int = 0) -> list[Record]:
    out = []
    for i in range(n_chunks):
        chunk = ScoreChunk(request_id, i, n_chunks, 2 * n_chunks, 2, None, None,
                           ad_id=np.array([10 * i, 10 * i + 1], np.int64),
                           bid=np.ones(2, np.float32), score=np.array([0.1, 0.2], np.float32))
        out.append(Record(settings.topics.scores, partition, first_offset + i,
                          request_id.encode(), encode(chunk),
                          {"origin": f"ads.requests[0]@{first_offset}".encode()}))
    return out


def _answers(results: list) -> list:
    return [r for r in results if isinstance(r, Held) and r.send]


def _settings(delivery: str) -> Settings:
    return amended(Settings(), actor={"delivery": delivery})


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_an_answer_never_sent_is_answered_again_on_replay(delivery: str) -> None:
    async def go() -> None:
        s = _settings(delivery)
        agg = Aggregator(s)
        first = await agg.handle(_records(s, "r1", 3, 0))
        [held] = _answers(first)
        held.until.cancel()  # the actor could not send it (partition lost, producer failed)
        await asyncio.sleep(0)
        again = await agg.handle(_records(s, "r1", 3, 0))
        assert len(_answers(again)) == 1, "the replay of an unsent answer was dropped"
    asyncio.run(go())


def test_an_acknowledged_answer_is_not_sent_twice_at_least_once() -> None:
    async def go() -> None:
        s = _settings("at_least_once")
        agg = Aggregator(s)
        [held] = _answers(await agg.handle(_records(s, "r1", 2, 0)))
        held.until.set_result(None)
        await asyncio.sleep(0)
        agg.revoked({TP(s.topics.scores, 0)})  # and assigned back: the replay is a duplicate
        assert _answers(await agg.handle(_records(s, "r1", 2, 0))) == []
    asyncio.run(go())


def test_exactly_once_forgets_answers_of_revoked_partitions() -> None:
    """Acknowledged is not committed: after a revocation the changelog decides."""
    async def go() -> None:
        s = _settings("exactly_once")
        agg = Aggregator(s)
        [a] = _answers(await agg.handle(_records(s, "r1", 2, 0, partition=0)))
        [b] = _answers(await agg.handle(_records(s, "r2", 2, 0, partition=1)))
        a.until.set_result(None)
        b.until.set_result(None)
        await asyncio.sleep(0)
        agg.revoked({TP(s.topics.scores, 0)})
        assert len(_answers(await agg.handle(_records(s, "r1", 2, 0, partition=0)))) == 1
        assert _answers(await agg.handle(_records(s, "r2", 2, 0, partition=1))) == []
    asyncio.run(go())
