"""The load generator's cheap paths: batched sends, answers peeked and matched by id."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgpack
import numpy as np
import pytest

from loadtest import arrivals
from loadtest.echo import echo
from loadtest.generate import generate, write_jsonl
from loadtest.replay import STAMPS, STATUSES, replay
from loadtest.system_under_test import Answer, AnswerSink, TransportSystem
from loadtest.traffic import Traffic, request_id
from pipeline.headers import SENT_MS
from pipeline.transport import Outgoing
from pipeline.transport.memory import MemoryTransport
from schemas.errors import SchemaError
from schemas.messages import ScoreResult, decode, encode
from schemas.result_peek import peek_result

_names = itertools.count()


def _result(status: str, n: int) -> ScoreResult:
    return ScoreResult("run-00000000042", status, ad_id=np.arange(n, dtype=np.int64),
                       bid=np.ones(n, np.float32), score=np.full(n, 0.25, np.float32),
                       n_candidates=100, n_scored=0 if status in ("expired", "rejected") else 77,
                       reason=None if status == "ok" else "why")


@pytest.mark.parametrize("status", ["ok", "partial", "expired", "rejected"])
def test_result_peek_equals_the_full_decode(status: str) -> None:
    data = encode(_result(status, 0 if status in ("expired", "rejected") else 10))
    full = decode(data, ScoreResult)
    peek = peek_result(data)
    assert peek is not None
    assert (peek.request_id, peek.status, peek.n_scored) == (
        full.request_id, full.status, full.n_scored)


def test_result_peek_refuses_what_the_full_decode_refuses() -> None:
    good = msgpack.unpackb(encode(_result("ok", 3)))
    bad = [b"\xc1not msgpack", msgpack.packb([1, 2]),
           msgpack.packb({**good, "schema": "ads.ScoreResult/2.0"}),
           msgpack.packb({**good, "schema": "ads.ScoreRequest/1.1"}),
           msgpack.packb({**good, "status": "fine"}),
           msgpack.packb({**good, "request_id": ""}),
           msgpack.packb({**good, "n_scored": -1})]
    for data in bad:
        with pytest.raises(SchemaError):
            decode(data, ScoreResult)
        assert peek_result(data) is None, data
    assert peek_result(encode(_result("ok", 3)), max_bytes=10) is None


class BurstSystem:
    """Answers each request 2 ms after it was handed over; remembers every burst."""

    def __init__(self) -> None:
        self.bursts: list[tuple[int, list[float], float]] = []  # first, intended, handed at
        self._sink: AnswerSink | None = None

    async def start(self, sink: AnswerSink) -> None:
        self._sink = sink

    async def send(self, first: int, entries: Sequence[int], intended_s: Sequence[float],
                   deadlines_ms: Sequence[int | None]) -> None:
        now = time.monotonic()
        self.bursts.append((first, list(intended_s), now))
        assert self._sink is not None
        for index in range(first, first + len(entries)):
            asyncio.get_running_loop().call_later(
                0.002, self._sink, Answer(index, "ok", now + 0.002, {}))

    async def stop(self) -> None:
        return None


async def test_batched_sends_keep_each_requests_intended_time() -> None:
    rate, n, batch_s = 2000.0, 1000, 0.005
    schedule = arrivals.plan(np.zeros(1), rate=rate, requests=n)
    system = BurstSystem()
    m = await replay(system, schedule, timeout_s=2.0, batch_s=batch_s)
    assert m.n_answered == n
    # far fewer sends than requests, in schedule order, each burst told its own intended times
    assert len(system.bursts) < n / 4
    firsts = [b[0] for b in system.bursts]
    assert firsts == sorted(firsts) and firsts[0] == 0
    handed = np.empty(n)
    for first, intended, at in system.bursts:
        np.testing.assert_allclose(intended, m.intended_s[first:first + len(intended)])
        handed[first:first + len(intended)] = at
    assert (handed >= m.intended_s).all()  # never early
    assert np.median(handed - m.intended_s) < batch_s + 0.001
    # latency counts from each request's intended time, not from when its burst left
    np.testing.assert_allclose(m.latency_ms(), (handed + 0.002 - m.intended_s) * 1000,
                               atol=1e-6)


def _traffic(tmp_path: Path, n: int = 30) -> Traffic:
    path = tmp_path / "traffic.jsonl"
    write_jsonl(path, generate(n, seed=5, candidates="uniform:3,40", timeout_ms=5000))
    return Traffic.load(path)


async def _memory_system(tmp_path: Path, requests_topic: str = "req"
                         ) -> tuple[MemoryTransport, Traffic, TransportSystem]:
    transport = MemoryTransport(f"memory://generator-{next(_names)}")
    await transport.create_topics(["req", "res"], 2)
    traffic = _traffic(tmp_path)
    system = TransportSystem(transport, traffic, requests_topic=requests_topic,
                             results_topic="res", tag="abcd1234")
    return transport, traffic, system


async def test_answers_are_matched_by_request_id_and_others_counted(tmp_path: Path) -> None:
    transport, traffic, system = await _memory_system(tmp_path)
    stop = asyncio.Event()
    responder = asyncio.create_task(echo(transport, "req", "res", stop))
    schedule = arrivals.plan(traffic.at_ms, rate=500.0, requests=90)
    producer = transport.producer()
    await producer.start()

    async def foreign() -> None:  # another run's answers and a damaged one, in the same topic
        await asyncio.sleep(0.1)
        for rid in (request_id("ffff0000", 3), "abcd1234-99999999999"):
            await producer.send(Outgoing("res", encode(ScoreResult(rid, "ok")),
                                         key=rid.encode()))
        await producer.send(Outgoing("res", b"\xc1", key=b"x"))

    extra = asyncio.create_task(foreign())
    m = await replay(system, schedule, timeout_s=5.0, batch_s=0.002)
    await extra
    stop.set()
    assert await responder == 90
    assert (m.status == 0).all() and m.n_answered == 90 and m.duplicates == 0
    np.testing.assert_array_equal(m.n_scored, traffic.n_candidates[schedule.entries])
    for stamp in (SENT_MS, "ts.fused.in", "ts.fused.out"):
        assert (m.stamps[:, STAMPS.index(stamp)] > 0).all(), stamp
    assert system.unexpected == 2 and system._reader is not None
    assert system._reader.unreadable == 1


async def test_a_failed_send_is_answered_error(tmp_path: Path) -> None:
    _, traffic, system = await _memory_system(tmp_path, requests_topic="missing")
    schedule = arrivals.plan(traffic.at_ms, rate=1000.0, requests=20)
    m = await replay(system, schedule, timeout_s=1.0, batch_s=0.003)
    assert (m.status == STATUSES.index("error")).all() and m.n_answered == 20
    assert system.n_failed == 20 and len(system.send_errors) == 20
    assert "does not exist" in system.send_errors[0]


@pytest.mark.kafka
def test_bench_generator_measures_each_setting_against_the_responder(
        kafka_bootstrap: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_generator", "--bootstrap", kafka_bootstrap,
         "--rate", "300", "--duration", "2", "--requests", "50", "--batch-ms", "0,3"],
        capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines()
            if line.strip().split(" ", 1)[0] in ("0", "3")]
    assert [r[0] for r in rows] == ["0", "3"]
    for r in rows:
        generator, responder, ratio = float(r[1]), float(r[2]), float(r[-8])
        assert generator > 0 and responder > 0
        assert ratio == pytest.approx(generator / responder, abs=0.01)
        answered, measured = map(int, r[-1].split("/"))
        assert answered == measured > 0
    assert "ms per request against a 0.1 ms budget" in out.stdout
