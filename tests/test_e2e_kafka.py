"""The whole pipeline on a real Kafka broker, with worker processes and the CLI."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from helpers import DirectScorer
from stack import Stack

from loadtest.generate import generate, write_jsonl
from schemas import DeadLetter, ScoreRequest, decode, encode
from schemas.columns import encode_array
from schemas.json_form import request_from_json
from workers.scoring.repository import load_model

pytestmark = pytest.mark.kafka


@pytest.fixture
def stack(kafka_bootstrap, model_repo, tmp_path, request):
    extra = getattr(request, "param", {})
    s = Stack(kafka_bootstrap, model_repo, tmp_path, **extra)
    s.create_topics()
    yield s
    s.close()


def test_thousand_requests_through_kafka_match_direct_scoring(stack, model_repo, tmp_path):
    stack.start_all()
    path = tmp_path / "requests.jsonl"
    write_jsonl(path, generate(1000, seed=21, candidates="uniform:20,300", timeout_ms=120_000))
    out = stack.cli("produce", str(path), "--wait", "--timeout", "180", timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    lines = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert len(lines) == 1000
    by_id = {x["request_id"]: x for x in lines}
    assert len(by_id) == 1000
    direct = DirectScorer(load_model(model_repo, "ctr"))
    for d in generate(1000, seed=21, candidates="uniform:20,300"):
        req = request_from_json(d, 0)
        got = by_id[req.request_id]
        assert got["status"] == "ok", got
        ad_id, scores = direct.top_k(req)
        assert [a["ad_id"] for a in got["ads"]] == ad_id.tolist(), req.request_id
        np.testing.assert_allclose([a["score"] for a in got["ads"]], scores, atol=1e-5, rtol=0)
    results = stack.results()
    assert len(results) == 1000  # exactly one answer each on the topic too
    assert all(stack.alive().values())


def _malformed(base: ScoreRequest, missing_topic: str) -> list[tuple[str, bytes, str]]:
    """A dozen different ways to be wrong: (name, bytes, what the reason must mention)."""

    def wire(**changes):
        d = msgpack.unpackb(encode(base), raw=False)
        for k, v in changes.items():
            if v is _DROP:
                d.pop(k)
            else:
                d[k] = v
        return msgpack.packb(d, use_bin_type=True)

    def with_cands(**cols):
        d = msgpack.unpackb(encode(base), raw=False)
        for k, v in cols.items():
            if v is _DROP:
                d["candidates"].pop(k)
            else:
                d["candidates"][k] = v
        return msgpack.packb(d, use_bin_type=True)

    n = base.n_candidates
    nan_bid = np.ones(n, np.float32)
    nan_bid[1] = math.nan
    return [
        ("garbage", b"\xc1\xc1 not msgpack", "MessagePack"),
        ("json", json.dumps({"request_id": "x"}).encode(), "looks like JSON"),
        ("future major", wire(schema="ads.ScoreRequest/2.0"), "schema"),
        ("wrong type", wire(schema="ads.ScoreChunk/1.0"), "schema"),
        ("no request id", wire(request_id=_DROP), "request_id"),
        ("no candidates", wire(candidates=_DROP), "candidates"),
        ("no bid", with_cands(bid=_DROP), "candidates.bid"),
        ("short column", with_cands(bid=encode_array(np.ones(n - 1, np.float32))),
         "candidates.bid"),
        ("nan", with_cands(bid=encode_array(nan_bid)), "candidates.bid[1]"),
        ("top_k string", wire(top_k="ten"), "top_k"),
        ("user list", wire(user={"city": [1, 2]}), "user.city"),
        ("negative bid", with_cands(bid=encode_array(-np.ones(n, np.float32))),
         "candidates.bid"),
        ("reply_to missing", wire(reply_to=missing_topic), "reply_to"),
        ("oversized", wire(padding=b"\x00" * 300_000), "limit"),
    ]


_DROP = object()


@pytest.mark.parametrize("stack", [{"actor": {"max_message_bytes": 200_000}}], indirect=True)
def test_malformed_input_goes_to_dlq_and_good_requests_still_answered(stack):
    stack.start_all()
    pids = {role: p.pid for role, p in stack.procs.items()}
    now = int(time.time() * 1000)
    good = [request_from_json(d, now) for d in generate(380, seed=5, candidates="uniform:5,60",
                                                        timeout_ms=120_000)]
    for i, req in enumerate(good):
        req.request_id = f"good-{i}"
    bad = []
    for i in range(20):
        base = request_from_json({
            "request_id": f"bad-{i}", "user_id": "u1", "timeout_ms": 120_000,
            "candidates": {"ad_id": [1, 2, 3], "bid": [0.5, 1.0, 2.0]}}, now)
        kinds = _malformed(base, f"{stack.prefix}.no-such-topic")
        name, value, mention = kinds[i % len(kinds)]
        bad.append((f"bad-{i}", name, value, mention))

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=8_000_000)
        await p.start()
        try:
            for i, req in enumerate(good):
                await p.send(stack.topics["requests"], encode(req), key=req.user_id.encode())
                if i % 19 == 0 and i // 19 < len(bad):
                    rid, _name, value, _ = bad[i // 19]
                    await p.send(stack.topics["requests"], value, key=rid.encode())
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(produce())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        results = stack.results()
        if sum(r.request_id.startswith("good-") for r in results) >= 380:
            break
        time.sleep(0.5)
    results = stack.results()
    statuses = {r.request_id: r.status for r in results}
    assert sum(1 for k in statuses if k.startswith("good-")) == 380
    assert {v for k, v in statuses.items() if k.startswith("good-")} == {"ok"}
    dead = [decode(r.value, DeadLetter) for r in stack.read_topic(stack.topics["dlq"])]
    assert len(dead) == len(bad)
    by_key = {d.key.decode(): d for d in dead}
    for rid, name, value, mention in bad:
        d = by_key[rid]
        assert mention in d.error, (name, d.error)
        assert d.value == value and d.source_topic == stack.topics["requests"]
        assert d.stage == "features" and d.source_offset >= 0
    # every bad request whose id could be read was told it was rejected, with the reason
    unreadable = ("garbage", "json", "no request id", "oversized")
    expected = {rid for rid, name, _, _ in bad if name not in unreadable}
    rejected = {k for k, v in statuses.items() if v == "rejected"}
    assert rejected == expected
    assert {role: p.pid for role, p in stack.procs.items()} == pids
    assert all(stack.alive().values())


def test_graceful_restart_mid_stream_answers_each_request_exactly_once(stack):
    stack.start_all()
    n, rate = 3000, 60.0  # a 50 s stream: three stops and starts fit in it on a slow VM
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now) for d in generate(n, seed=8, candidates="uniform:20,200",
                                                        timeout_ms=300_000)]
    done = threading.Event()

    async def produce_paced() -> None:
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=2)
        await p.start()
        try:
            start = time.monotonic()
            for i, req in enumerate(reqs):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await p.send(stack.topics["requests"], encode(req), key=req.user_id.encode())
            await p.flush()
        finally:
            await p.stop()
            done.set()

    t = threading.Thread(target=lambda: asyncio.run(produce_paced()))
    t.start()
    deadline = time.monotonic() + 60
    while len(stack.results()) < 100:
        assert time.monotonic() < deadline, "no results"
        time.sleep(0.2)
    for role in ("scorer", "aggregator", "features"):
        assert stack.stop(role) == 0, f"{role} did not exit cleanly"
        stack.start(role)
        assert not done.is_set(), f"the stream ended before {role} was restarted"
    t.join()
    deadline = time.monotonic() + 120
    while len({r.request_id for r in stack.results()}) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # a duplicate would have arrived by now
    results = stack.results()
    counts: dict[str, int] = {}
    for r in results:
        counts[r.request_id] = counts.get(r.request_id, 0) + 1
    assert len(counts) == n, f"{n - len(counts)} requests unanswered"
    assert max(counts.values()) == 1, {k: v for k, v in counts.items() if v > 1}
    assert {r.status for r in results} == {"ok"}
