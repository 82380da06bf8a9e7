"""The Python client on the real broker, with the three roles running in this process."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import DirectScorer, assert_same_answer

from adstream_client import (
    AsyncClient,
    BrokerUnavailable,
    Client,
    Rejected,
    ScoreRequest,
    ScoreTimeout,
)
from loadtest.generate import generate
from pipeline.transport import open_transport
from schemas.json_form import request_from_json
from workers.scoring.repository import load_model

pytestmark = pytest.mark.kafka


def _requests(n: int, seed: int) -> list[ScoreRequest]:
    now = int(time.time() * 1000)
    return [request_from_json(d, now)
            for d in generate(n, seed=seed, candidates="uniform:1,40", timeout_ms=60_000)]


def _partitions(bootstrap: str, topic: str) -> int:
    return asyncio.run(open_transport(bootstrap).partitions(topic))


def test_thousand_concurrent_scores_from_eight_threads_are_each_answered_and_matched(
        running_pipeline, model_repo) -> None:
    s = running_pipeline.settings
    reqs = _requests(1000, seed=31)
    with Client(running_pipeline.bootstrap, requests_topic=s.topics.requests) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda r: client.score(r, timeout=60), reqs))
        reply_topic = client.reply_topic
        assert _partitions(running_pipeline.bootstrap, reply_topic) == 1  # its own topic
    assert _partitions(running_pipeline.bootstrap, reply_topic) == 0  # deleted on close
    direct = DirectScorer(load_model(model_repo, "ctr"))
    assert [r.request_id for r in results] == [q.request_id for q in reqs]
    for req, res in zip(reqs, results, strict=True):
        assert_same_answer(direct, req, res)


def test_a_request_nobody_answers_raises_score_timeout_after_the_timeout(
        running_pipeline) -> None:
    unserved = f"{running_pipeline.settings.topics.requests}.unserved"
    asyncio.run(open_transport(running_pipeline.bootstrap).create_topics([unserved], 1))
    with Client(running_pipeline.bootstrap, requests_topic=unserved, linger_s=0.1) as client:
        start = time.monotonic()
        with pytest.raises(ScoreTimeout, match=r"no answer to request 'late-1' within 0\.5s"):
            client.score({"request_id": "late-1", "user_id": "u1",
                          "candidates": {"ad_id": [1], "bid": [0.5]}}, timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 3


def test_a_request_the_pipeline_refuses_raises_rejected_with_its_reason(
        running_pipeline) -> None:
    bad = ScoreRequest("bad-1", "u1", {"ad_id": np.arange(3, dtype=np.int64),
                                       "bid": np.arange(3, dtype=np.int64)})
    with Client(running_pipeline.bootstrap,
                requests_topic=running_pipeline.settings.topics.requests) as client:
        with pytest.raises(Rejected) as info:
            client.score(bad, timeout=30)
        ok = client.score(_requests(1, seed=5)[0], timeout=30)  # the client still works
    assert info.value.request_id == "bad-1"
    assert info.value.reason == "candidates.bid: must be a non-negative float column"
    assert ok.status == "ok"


async def test_async_client_scores_many_and_returns_errors_in_place(running_pipeline) -> None:
    s = running_pipeline.settings
    reqs = _requests(20, seed=7)
    bad = ScoreRequest("bad-2", "u1", {"ad_id": np.arange(2, dtype=np.int64),
                                       "bid": np.array([-1.0, 1.0], np.float32)})
    async with AsyncClient(running_pipeline.bootstrap, requests_topic=s.topics.requests) as c:
        out = await c.score_many([*reqs, bad], timeout=30, return_exceptions=True)
    assert [r.request_id for r in out[:-1]] == [r.request_id for r in reqs]
    assert all(r.status == "ok" and len(r.ad_id) == min(r.n_candidates, 10) for r in out[:-1])
    assert isinstance(out[-1], Rejected) and "candidates.bid" in out[-1].reason


def test_no_broker_raises_broker_unavailable_in_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = Client(f"127.0.0.1:{port}", open_timeout=10)
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}") as info:
            client.open()
    assert "\n" not in str(info.value)
