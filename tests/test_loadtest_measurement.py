"""The replayer's measurement itself, against fake systems whose delays are known exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from loadtest import arrivals
from loadtest.replay import Measurement, replay
from loadtest.summary import latency_percentiles, summarize
from loadtest.system_under_test import Answer, AnswerSink


class DelaySystem:
    """Answers request ``i`` ``delays_s[i]`` after it was handed over (or, with
    ``from_intended``, after it was meant to be sent: a system seen by a perfect client).
    With ``stall``, it stops for ``stall[1]`` seconds starting ``stall[0]`` seconds after the
    first request: either it takes no requests (``send`` blocks, as a full producer buffer
    does) or it takes them but answers nothing until the stall ends."""

    def __init__(self, delays_s: np.ndarray, stall: tuple[float, float] | None = None,
                 blocks_sends: bool = True, from_intended: bool = False) -> None:
        self.delays_s = delays_s
        self.from_intended = from_intended
        self.stall = stall
        self.blocks_sends = blocks_sends
        self.window: tuple[float, float] | None = None
        self.answer_at: dict[int, float] = {}
        self._sink: AnswerSink | None = None

    async def start(self, sink: AnswerSink) -> None:
        self._sink = sink

    async def send(self, first: int, entries: Sequence[int], intended_s: Sequence[float],
                   deadlines_ms: Sequence[int | None]) -> None:
        now = time.monotonic()
        if self.stall is not None and self.window is None:
            self.window = (now + self.stall[0], now + self.stall[0] + self.stall[1])
        w = self.window
        if w is not None and self.blocks_sends and w[0] <= now < w[1]:
            await asyncio.sleep(w[1] - now)
            now = time.monotonic()
        for index, intended in enumerate(intended_s, first):
            at = (intended if self.from_intended else now) + float(self.delays_s[index])
            if w is not None and not self.blocks_sends and w[0] <= at < w[1]:
                at = w[1]
            self.answer_at[index] = at
            assert self._sink is not None
            asyncio.get_running_loop().call_later(
                max(0.0, at - time.monotonic()), self._sink, Answer(index, "ok", at, {}))

    async def stop(self) -> None:
        return None


def _delays(n: int, seed: int) -> np.ndarray:
    """A CTR-serving-like shape: a lognormal body around 8 ms and a 5 % tail at 40-90 ms."""
    rng = np.random.default_rng(seed)
    d = rng.lognormal(np.log(0.008), 0.35, n)
    tail = rng.random(n) < 0.05
    d[tail] = rng.uniform(0.040, 0.090, int(tail.sum()))
    return d


def _truth(values_ms: np.ndarray, p: float) -> float:
    return float(np.percentile(values_ms, p, method="inverted_cdf"))


async def test_percentiles_match_the_injected_delays_within_a_millisecond() -> None:
    rate, n, warmup = 2000.0, 4000, 0.5
    schedule = arrivals.plan(np.zeros(1), rate=rate, requests=n)
    delays = _delays(n, seed=3)
    m = await replay(DelaySystem(delays, from_intended=True), schedule, warmup_s=warmup,
                     timeout_s=2.0)
    measured = schedule.offsets_s >= warmup
    truth_ms = delays[measured] * 1000
    got = latency_percentiles(m.histogram)
    assert got["count"] == measured.sum()
    for p in (50.0, 90.0, 99.0, 99.9):
        key = f"p{p:g}"
        assert abs(got[key] - _truth(truth_ms, p)) <= 1.0, (key, got[key], _truth(truth_ms, p))
    assert abs(got["max"] - truth_ms.max()) <= 1.0
    doc = summarize(m, np.array([10]))
    assert doc["summary"]["outcomes"]["ok"] == measured.sum()
    assert doc["summary"]["outcomes"]["lost"] == 0
    assert doc["summary"]["warmup_requests"] == n - measured.sum()
    assert abs(doc["summary"]["offered_rate"] - rate) < 1


async def test_the_sender_keeps_to_the_schedule_within_a_millisecond() -> None:
    """Against a system that starts its delay when it gets the request, what is measured is
    the delay plus how late the request was sent: the sender must be punctual."""
    rate, n = 500.0, 800
    schedule = arrivals.plan(np.zeros(1), rate=rate, requests=n)
    delays = _delays(n, seed=4)
    m = await replay(DelaySystem(delays), schedule, timeout_s=2.0)
    lag_ms = (m.sent_s - m.intended_s) * 1000
    assert (lag_ms >= 0).all()  # never early
    assert np.percentile(lag_ms, 50) < 1.0
    got = latency_percentiles(m.histogram)
    # 2 ms: on the slower 2-core VM the fake system's own timers overshoot by ~1.5 ms
    assert abs(got["p50"] - _truth(delays * 1000, 50)) <= 2.0


def _send_lag_p99(m: Measurement) -> float:
    return float(np.percentile((m.sent_s - m.intended_s) * 1000, 99))


async def _stall_run(blocks_sends: bool) -> tuple[Measurement, DelaySystem]:
    rate, seconds = 500.0, 2.2
    schedule = arrivals.plan(np.zeros(1), rate=rate, duration_s=seconds)
    system = DelaySystem(np.full(len(schedule), 0.002), stall=(0.6, 1.0),
                         blocks_sends=blocks_sends)
    m = await replay(system, schedule, timeout_s=5.0)
    return m, system


async def test_a_stall_shows_in_p99_for_requests_scheduled_during_it() -> None:
    for blocks_sends in (True, False):
        m, system = await _stall_run(blocks_sends)
        assert system.window is not None
        stall_start, stall_end = system.window
        intended = m.intended_s
        during = (intended >= stall_start) & (intended < stall_end)
        assert 450 <= during.sum() <= 550
        lat = m.latency_ms()
        # every request scheduled during the stall waited for its end, counted from when it
        # was meant to be sent (plus the injected 2 ms, plus catching up after the stall)
        waited = (stall_end - intended[during]) * 1000
        assert (lat[during] >= waited - 0.5).all()
        assert (lat[during] <= waited + 100).all()
        truth = np.array([system.answer_at[i] for i in range(len(intended))]) - intended
        np.testing.assert_allclose(lat, truth * 1000, atol=0.01)
        got = latency_percentiles(m.histogram)
        # nearly half the requests were scheduled in the 1 s stall: the slowest 1 % of all
        # of them waited for most of it
        assert abs(got["p99"] - _truth(truth * 1000, 99)) <= 1.0
        assert got["p99"] > 950
        assert got["max"] > 990
        # measuring from the actual send time (coordinated omission) would have hidden it
        if blocks_sends:
            naive = (m.received_s - m.sent_s) * 1000
            assert np.percentile(naive, 99) < 200


async def test_unanswered_requests_are_lost_after_the_timeout_and_late_answers_too() -> None:
    n = 200
    delays = np.full(n, 0.002)
    delays[::10] = 0.6  # answered after the 0.3 s timeout: lost
    schedule = arrivals.plan(np.zeros(1), rate=1000.0, requests=n)
    m = await replay(DelaySystem(delays), schedule, timeout_s=0.3)
    await asyncio.sleep(0.7)  # the late answers arrive after the run
    doc = summarize(m, np.array([5]))
    assert doc["summary"]["outcomes"]["lost"] == 20
    assert doc["summary"]["outcomes"]["ok"] == 180
    assert doc["latency_ms"]["count"] == 180
    assert doc["latency_ms"]["max"] < 100
