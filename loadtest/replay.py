"""Open-loop replay: send each request at its intended time, whatever the answers do.

Latency is measured from the *intended* send time, never from when the request could
actually be sent (wrk2's rule against coordinated omission): when the system, the
producer's buffer or this process stalls, the requests scheduled during the stall are
sent late and their latency includes the wait. With ``batch_s`` the sender wakes at most
once per ``batch_s`` and hands every request due by then to the system in one go (fewer
produce requests and wake-ups, which is most of what the generator costs), adding up to
``batch_s`` + 1 ms of send lag; each request's latency still counts from its own intended
time. Latencies of the measured window (after
``warmup_s``) go into an HdrHistogram; a request without an answer ``timeout_s`` after its
intended time is lost.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.arrivals import Schedule
from loadtest.system_under_test import Answer, System
from pipeline.headers import SENT_MS, STAGE_PREFIX, now_ms

STATUSES = ("ok", "partial", "expired", "rejected", "error")
ANSWERED = ("ok", "partial", "expired", "rejected")  # a result arrived (with its latency)
_CODE = {s: i for i, s in enumerate(STATUSES)}
ERROR = _CODE["error"]
NONE = -1
STAMPS = (SENT_MS, *(f"{STAGE_PREFIX}{s}.{edge}" for s in
                       ("features", "scorer", "aggregator", "fused")
                       for edge in ("in", "out")))


def stamps_of(headers: Mapping[str, bytes]) -> list[int]:
    """A result's :data:`STAMPS` (epoch ms; 0 where missing), one row of the breakdown."""
    get = headers.get
    return [int(get(name) or 0) for name in STAMPS]


HIGHEST_US = 3_600_000_000  # an hour, in microseconds
LEAD_S = 0.05  # the first request is due this long after start() returns
MAX_BURST = 256  # requests handed to the system in one go at most


def new_histogram() -> HdrHistogram:
    """Microseconds from 1 µs to an hour, 3 significant digits."""
    return HdrHistogram(1, HIGHEST_US, 3)


@dataclass
class Measurement:
    """What one replay measured; every array is indexed by scheduled request."""

    schedule: Schedule
    warmup_s: float
    timeout_s: float
    t0: float = 0.0  # time.monotonic() of offset 0
    wall0_ms: float = 0.0  # the same instant as epoch milliseconds
    n_sent: int = 0
    n_answered: int = 0
    duplicates: int = 0
    late: int = 0  # answers that came after the timeout (counted as lost)
    interrupted: bool = False
    sent_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    received_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    n_scored: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stamps: np.ndarray = field(default_factory=lambda: np.zeros((0, len(STAMPS)), np.int64))
    histogram: HdrHistogram = field(default_factory=new_histogram)
    ended_s: float = 0.0
    #: set whenever every request sent so far has its answer (what the drain waits for)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @classmethod
    def for_schedule(cls, schedule: Schedule, warmup_s: float, timeout_s: float) -> Measurement:
        n = len(schedule)
        return cls(schedule, warmup_s, timeout_s,
                   sent_s=np.full(n, np.nan), received_s=np.full(n, np.nan),
                   status=np.full(n, NONE, np.int8), n_scored=np.zeros(n, np.int64),
                   stamps=np.zeros((n, len(STAMPS)), np.int64))

    @functools.cached_property
    def _offsets(self) -> list[float]:
        offsets: list[float] = self.schedule.offsets_s.tolist()  # Python floats: cheaper
        return offsets  # one at a time

    def on_answer(self, a: Answer) -> None:
        i = a.request
        if self.status[i] != NONE:
            self.duplicates += 1
            return
        code = _CODE.get(a.status, ERROR)
        offset = self._offsets[i]
        latency = a.received_s - (self.t0 + offset)
        if code != ERROR and latency > self.timeout_s:
            self.late += 1
            return
        self.status[i] = code
        self.received_s[i] = a.received_s
        self.n_answered += 1
        if self.n_answered >= self.n_sent:
            self.caught_up.set()
        if code == ERROR:
            return
        self.n_scored[i] = a.n_scored
        if a.headers:
            self.stamps[i] = stamps_of(a.headers)
        if offset >= self.warmup_s:
            self.histogram.record_value(min(HIGHEST_US, max(1, round(latency * 1e6))))

    # ---- views ---------------------------------------------------------------------------

    @property
    def intended_s(self) -> np.ndarray:
        return self.t0 + self.schedule.offsets_s

    def latency_ms(self) -> np.ndarray:
        """Latency from the intended send time, NaN where no result arrived."""
        lat: np.ndarray = (self.received_s - self.intended_s) * 1000.0
        lat[(self.status < 0) | (self.status == ERROR)] = np.nan
        return lat

    def measured(self) -> np.ndarray:
        """Mask of the sent requests in the measured window (after the warm-up)."""
        mask = self.schedule.offsets_s >= self.warmup_s
        mask[self.n_sent:] = False
        return mask


@dataclass
class Snapshot:
    """The live progress numbers."""

    elapsed_s: float
    sent: int
    answered: int
    scheduled: int
    send_rate: float
    answer_rate: float
    p50_ms: float
    p99_ms: float
    outstanding: int
    overdue: int  # sent, unanswered and past the timeout: will count as lost
    errors: int  # non-ok answers
    phase: str


class _Rates:
    def __init__(self) -> None:
        self.last: tuple[float, int, int] | None = None

    def step(self, now: float, sent: int, answered: int) -> tuple[float, float]:
        prev, self.last = self.last, (now, sent, answered)
        if prev is None or now <= prev[0]:
            return 0.0, 0.0
        dt = now - prev[0]
        return (sent - prev[1]) / dt, (answered - prev[2]) / dt


def snapshot(m: Measurement, rates: _Rates, phase: str) -> Snapshot:
    now = time.monotonic()
    lat = m.latency_ms()[:m.n_sent]
    done = lat[~np.isnan(lat)]
    p50, p99 = (np.percentile(done, [50, 99]).tolist() if len(done) else [np.nan, np.nan])
    unanswered = m.status[:m.n_sent] < 0
    overdue = int((unanswered & (m.intended_s[:m.n_sent] + m.timeout_s < now)).sum())
    errors = int(((m.status[:m.n_sent] > 0)).sum())
    send_rate, answer_rate = rates.step(now, m.n_sent, m.n_answered)
    return Snapshot(now - m.t0, m.n_sent, m.n_answered, len(m.schedule), send_rate,
                    answer_rate, p50, p99, int(unanswered.sum()), overdue, errors, phase)


ProgressSink = Callable[[Snapshot], None]


async def replay(
    system: System,
    schedule: Schedule,
    *,
    deadline_ms: np.ndarray | None = None,
    warmup_s: float = 0.0,
    timeout_s: float = 10.0,
    progress: ProgressSink | None = None,
    progress_interval_s: float = 1.0,
    stop: asyncio.Event | None = None,
    batch_s: float = 0.0,
) -> Measurement:
    """Send ``schedule`` open-loop to ``system`` and measure every answer.

    ``deadline_ms`` gives each scheduled request a deadline relative to its intended send
    time (0: none). Setting ``stop`` ends sending early; what was sent is still awaited.
    ``batch_s`` > 0 sends in bursts at most that often (see the module docstring).
    """
    m = Measurement.for_schedule(schedule, warmup_s, timeout_s)
    n = len(schedule)
    await system.start(m.on_answer)
    try:
        m.t0 = time.monotonic() + LEAD_S
        m.wall0_ms = now_ms() + LEAD_S * 1000.0
        if deadline_ms is None:
            deadlines: list[int | None] = [None] * n
        else:
            absolute = (m.wall0_ms + schedule.offsets_s * 1000.0 + deadline_ms).astype(np.int64)
            deadlines = [int(d) if rel > 0 else None
                         for d, rel in zip(absolute.tolist(), deadline_ms.tolist(), strict=True)]
        done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            if progress is not None:
                tg.create_task(_report_progress(m, progress, progress_interval_s, done))
            try:
                await _send_all(system, m, deadlines, stop, batch_s)
                await _await_answers(m)
            finally:
                done.set()
    finally:
        await system.stop()
    m.ended_s = time.monotonic()
    return m


async def _send_all(system: System, m: Measurement, deadlines: list[int | None],
                    stop: asyncio.Event | None, batch_s: float) -> None:
    """Hand every due request to the system in bursts: all the requests whose intended time
    has come go in one ``send`` (at most ``MAX_BURST``, so answers are read while catching
    up); the next burst waits for the next intended time, and at least ``batch_s`` after
    this one."""
    offsets = m.schedule.offsets_s.tolist()
    entries = m.schedule.entries.tolist()
    n = len(offsets)
    sent = m.sent_s
    clock = time.monotonic
    send = system.send
    t0 = m.t0
    i = 0
    last_burst = -math.inf
    slack = _timer_slack()
    while i < n:
        if stop is not None and stop.is_set():
            m.interrupted = True
            return
        now = clock()
        j = bisect.bisect_right(offsets, now - t0, i, min(n, i + MAX_BURST))
        if j > i:
            sent[i:j] = last_burst = now
            await send(i, entries[i:j], [t0 + o for o in offsets[i:j]], deadlines[i:j])
            full = j - i == MAX_BURST
            m.n_sent = i = j
            if full:
                await asyncio.sleep(0)  # let answers in while catching up
                continue
        if i < n and batch_s > 0:
            # a loop timer (one wake-up, up to 1 ms late) is precise enough here
            await asyncio.sleep(max(t0 + offsets[i], last_burst + batch_s) - clock())
        elif i < n:
            await _wait_until(t0 + offsets[i], slack)


# The event loop's timers are late by up to a millisecond (timeouts count in whole
# milliseconds), and uvloop's also fire up to ~0.5 ms early (libuv's clock is in whole
# milliseconds), so on uvloop a send's timer is aimed this much late; one that still fires
# early is set again. Sends lag their intended time by ~0.6 ms at p50, which counts in
# every latency (measured from the intended time) and shows as the "client send lag"
# stage. Sleeping the last stretch in a helper thread was tens of µs precise, but that
# thread hop cost 80-170 µs of CPU per request on the 2-core VM, a third of what the load
# generator spent per request.
UVLOOP_SLACK_S = 0.0005


def _timer_slack() -> float:
    """How late to aim a send's timer on the running loop (asyncio's never fires early)."""
    loop = asyncio.get_running_loop()
    return UVLOOP_SLACK_S if type(loop).__module__.startswith("uvloop") else 0.0


async def _wait_until(t: float, slack: float) -> None:
    """Until the monotonic time ``t``, never returning before it."""
    # a deadline, not a condition to poll: the loop runs at most twice (an early timer)
    while (delay := t - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(delay + slack)


async def _await_answers(m: Measurement) -> None:
    """Until every sent request is answered or past its timeout (also after an interrupt:
    what was sent is measured)."""
    if m.n_sent == 0:
        return
    give_up = m.t0 + float(m.schedule.offsets_s[m.n_sent - 1]) + m.timeout_s
    m.caught_up.clear()  # n_sent is final now: the next set means every request is answered
    if m.n_answered < m.n_sent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(m.caught_up.wait(), max(0.0, give_up - time.monotonic()))


async def _report_progress(m: Measurement, sink: ProgressSink, interval_s: float,
                           done: asyncio.Event) -> None:
    rates = _Rates()
    rates.step(time.monotonic(), 0, 0)
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval_s)
        phase = ("done" if done.is_set() else
                 "warm-up" if time.monotonic() - m.t0 < m.warmup_s else
                 "draining" if m.n_sent == len(m.schedule) else "sending")
        if phase == "done":
            rates = _Rates()  # the last line shows the averages over the whole run
            rates.step(m.t0, 0, 0)
        sink(snapshot(m, rates, phase))
