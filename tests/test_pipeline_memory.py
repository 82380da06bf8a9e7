"""All three roles on the in-process broker: every request answered once, correctly."""

import asyncio
import itertools
import time

import pytest
from helpers import DirectScorer, assert_same_answer

from loadtest.generate import generate
from pipeline.config import amended
from pipeline.transport import Outgoing
from pipeline.transport.memory import MemoryBroker
from schemas import ScoreRequest
from schemas.json_form import request_from_json
from schemas.messages import ScoreResult, decode
from workers.client import ResultWaiter, request_message, send_requests
from workers.roles import FUSED, THREE_HOPS, ensure_topics, run_roles, transport_for
from workers.scoring.repository import load_model
from workers.settings import Settings

_names = itertools.count()


@pytest.fixture
def settings(model_repo):
    name = f"e2e{next(_names)}"
    yield amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                  scorer={"model_repo": str(model_repo)}, features={"chunk_rows": 64},
                  topics={"partitions": 3})
    MemoryBroker.drop(name)


def _requests(n: int, seed: int, timeout_ms: int = 30_000) -> list[ScoreRequest]:
    now = int(time.time() * 1000)
    return [request_from_json(d, now)
            for d in generate(n, seed=seed, candidates="uniform:1,300", timeout_ms=timeout_ms)]


async def _serve(settings, reqs, within_s=30.0, roles=("features", "scorer", "aggregator")):
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop = asyncio.Event()
    roles = asyncio.create_task(run_roles(list(roles), settings, stop, transport))
    producer = transport.producer()
    async with ResultWaiter(transport, settings.topics.results) as waiter:
        futs = {r.request_id: waiter.expect(r.request_id) for r in reqs}
        await send_requests(producer, reqs, settings.topics.requests)
        await asyncio.wait(futs.values(), timeout=within_s)
        await asyncio.sleep(0.2)  # a duplicate answer would arrive by now
        unexpected = waiter.unexpected
    stop.set()
    actors = await roles
    return {rid: f.result() for rid, f in futs.items() if f.done()}, unexpected, actors


async def test_every_request_gets_the_direct_top_k(settings, model_repo) -> None:
    reqs = _requests(150, seed=11)
    results, unexpected, actors = await _serve(settings, reqs)
    assert len(results) == len(reqs) and unexpected == 0
    direct = DirectScorer(load_model(model_repo, "ctr"))
    for req in reqs:
        assert_same_answer(direct, req, results[req.request_id])
    scorer = next(a for a in actors if a.handler.name == "scorer")
    assert scorer.handler.batcher.stats.batches < scorer.stats.consumed  # rows were batched


async def test_expired_requests_are_answered_expired(settings) -> None:
    reqs = _requests(5, seed=12)
    for r in reqs:
        r.deadline_ms = int(time.time() * 1000) - 1
    results, _, actors = await _serve(settings, reqs)
    assert {r.status for r in results.values()} == {"expired"}
    assert len(results) == 5
    assert all(results[r.request_id].n_candidates == r.n_candidates for r in reqs)
    features = next(a for a in actors if a.handler.name == "features")
    assert features.handler.expired == 5


async def test_fused_features_and_scorer_give_the_same_answers(settings, model_repo) -> None:
    reqs = _requests(80, seed=13)
    results, unexpected, actors = await _serve(settings, reqs, roles=FUSED)
    assert len(results) == len(reqs) and unexpected == 0
    direct = DirectScorer(load_model(model_repo, "ctr"))
    for req in reqs:
        assert_same_answer(direct, req, results[req.request_id])
    fused = next(a for a in actors if a.handler.name == "fused")
    assert fused.stats.consumed == len(reqs)
    broker = MemoryBroker.get(settings.kafka.bootstrap.removeprefix("memory://"))
    assert sum(len(p) for p in broker.topics[settings.topics.features]) == 0  # no hop
    assert sum(len(p) for p in broker.topics[settings.topics.scores]) == 0  # nor this one


async def test_a_reused_request_id_is_rejected_and_a_redelivered_chunk_dropped(settings) -> None:
    first, second = _requests(2, seed=14)
    second.request_id = first.request_id
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop = asyncio.Event()
    roles = asyncio.create_task(run_roles(list(THREE_HOPS), settings, stop, transport))
    producer = transport.producer()
    broker = MemoryBroker.get(settings.kafka.bootstrap.removeprefix("memory://"))

    def answers() -> list[ScoreResult]:
        return [decode(r.value, ScoreResult) for p in broker.topics[settings.topics.results]
                for r in p if r.key == first.request_id.encode()]

    async def until(n: int) -> None:
        for _ in range(500):
            if len(answers()) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} answers expected, got {answers()}")

    await producer.send(request_message(first, settings.topics.requests))
    await until(1)
    # a copy of an already-handled chunk (what a redelivery looks like): dropped silently
    chunk = next(r for p in broker.topics[settings.topics.scores] for r in p)
    await producer.send(Outgoing(settings.topics.scores, chunk.value, key=chunk.key,
                                 headers=dict(chunk.headers), partition=chunk.partition))
    await producer.send(request_message(second, settings.topics.requests))
    await until(2)
    await asyncio.sleep(0.3)  # a third answer would arrive by now
    stop.set()
    await roles
    got = answers()
    assert [a.status for a in got] == ["ok", "rejected"], got
    assert "already in use" in (got[1].reason or "")
