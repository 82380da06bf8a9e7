"""A discrete-event simulation of the pipeline: open-loop Poisson arrivals, a FIFO queue per
stage, the scorer's dynamic batcher, and machines whose cores the stages share.

Written by hand (a next-event loop) rather than with SimPy: the one thing it
needs that a process library does not give for free is processor sharing, several
single-threaded event loops and model threads on one machine's cores, each running at
``min(1, cores / busy threads)``; with at most a dozen busy threads a plain loop over them
per event is fast enough (about 100k events per second).

A *route* is the list of steps one request takes: a :class:`Visit` (work on a
:class:`Server`, an event loop or a broker thread pool, FIFO), a :class:`Batch` (the
:class:`Batcher`, which joins requests' rows into model batches as ``pipeline/batcher.py``
does: flush at ``max_rows`` or ``max_wait`` after the oldest waiting submission, one batch
per free instance, a submission's rows never split) or a :class:`Delay` (time on a wire).
Streams of requests follow routes; only the tagged stream's latencies are reported, the
others load the servers they visit (the rest of a fleet, by symmetry).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Machine:
    """``cores`` shared by every thread busy on it; ``background`` cores taken by other work."""

    name: str
    cores: float = 1.0
    background: float = 0.0
    # other work that comes and goes: these extra levels in turn, each for ``period_s``
    levels: tuple[float, ...] = ()
    period_s: float = 5.0

    def __post_init__(self) -> None:
        if self.cores <= 0 or self.background < 0 or any(x < 0 for x in self.levels):
            raise ValueError(f"machine {self.name}: cores must be > 0 and background ≥ 0")

    def other(self, t: float) -> float:
        if not self.levels:
            return self.background
        return self.background + self.levels[int(t / self.period_s) % len(self.levels)]


@dataclass(frozen=True)
class Server:
    """A FIFO queue served by ``threads`` threads (1: an asyncio event loop) on ``machine``.

    With ``per_batch`` it serves as the batch actor does: a free thread takes every request
    waiting on the oldest one's partition (at most ``max_batch``), for ``per_batch`` plus
    each request's own work."""

    name: str
    machine: Machine
    threads: int = 1
    per_batch: Work | None = None
    max_batch: int = 10_000


@dataclass(frozen=True)
class Work:
    """A service time distribution: ``const``, ``exp`` or ``lognormal`` (shape ``sigma``)."""

    mean_s: float
    dist: str = "lognormal"
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.mean_s < 0 or self.dist not in ("const", "exp", "lognormal"):
            raise ValueError(f"bad work: mean {self.mean_s} s, distribution {self.dist!r}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.mean_s == 0 or self.dist == "const" or (self.dist == "lognormal"
                                                         and self.sigma == 0):
            return np.full(n, self.mean_s)
        if self.dist == "exp":
            return rng.exponential(self.mean_s, n)
        mu = math.log(self.mean_s) - self.sigma ** 2 / 2  # the mean stays mean_s
        return rng.lognormal(mu, self.sigma, n)


@dataclass(frozen=True)
class Visit:
    server: Server
    work: Work


@dataclass(frozen=True)
class Batcher:
    """The scorer's dynamic batcher: ``instances`` model threads on ``machine``."""

    name: str
    machine: Machine
    max_rows: int
    max_wait_s: float
    batch_s: Callable[[int], float]  # model time of a batch of that many rows
    instances: int = 1


@dataclass(frozen=True)
class Batch:
    batcher: Batcher


@dataclass(frozen=True)
class Delay:
    seconds: float


Step = Visit | Batch | Delay


@dataclass(frozen=True)
class Stream:
    """Poisson arrivals at ``rate`` per second, each request with ``rows`` model rows, on
    one of ``partitions`` partitions at random (a batch server batches one at a time)."""

    rate: float
    route: tuple[Step, ...]
    rows: int = 1
    tagged: bool = True
    partitions: int = 1


@dataclass
class Result:
    latency_s: np.ndarray  # tagged requests that arrived after the warm-up, in arrival order
    unfinished: int  # tagged requests still in the system at the end
    busy: dict[str, float]  # each machine's mean busy cores (threads × speed)
    slowdown: dict[str, float]  # each machine's wall seconds per CPU second of its threads
    batches: int
    batch_rows_mean: float

    def p(self, q: float) -> float:
        """The ``q``-th percentile latency; unfinished requests count as infinitely late
        (percentiles above the finished share are infinite; numpy's own interpolation
        over infinities warns and gives nan)."""
        n = len(self.latency_s)
        finished = self.latency_s[np.isfinite(self.latency_s)]
        if not n or q >= 100 * len(finished) / n:
            return math.inf
        return float(np.percentile(finished, min(100.0, q * n / len(finished))))

    @property
    def mean(self) -> float:
        return float(self.latency_s.mean()) if len(self.latency_s) else math.inf


# ---- the event loop ------------------------------------------------------------------------


@dataclass(eq=False)
class _Req:
    arrived: float
    stream: int
    route: tuple[Step, ...]
    rows: int
    works: np.ndarray  # sampled service seconds, one per step (Visits only)
    partition: tuple[int, int] = (0, 0)  # (stream, partition)
    step: int = 0


@dataclass(eq=False)
class _Thread:
    """Work in progress on a machine: a request at a server, or a batch on an instance."""

    left: float  # seconds of work at full speed
    reqs: list[_Req] | None = None
    server: Server | None = None
    batch: list[_Req] | None = None
    batcher: Batcher | None = None


@dataclass
class _BatcherState:
    queue: deque[_Req] = field(default_factory=deque)
    enqueued: deque[float] = field(default_factory=deque)
    rows: int = 0
    free: int = 1


def simulate(streams: Sequence[Stream], *, duration_s: float, warmup_s: float = 1.0,
             seed: int = 0, drain_s: float = 5.0) -> Result:
    """Run the streams for ``duration_s`` (plus up to ``drain_s`` to finish); latencies of
    the tagged requests that arrived after ``warmup_s``."""
    rng = np.random.default_rng(seed)
    reqs: list[_Req] = []
    for k, st in enumerate(streams):
        if st.rate <= 0:
            continue
        n = rng.poisson(st.rate * duration_s)
        times = np.sort(rng.uniform(0.0, duration_s, n))
        works = np.zeros((n, len(st.route)))
        for j, step in enumerate(st.route):
            if isinstance(step, Visit):
                works[:, j] = step.work.sample(rng, n)
        parts = rng.integers(0, st.partitions, n)
        reqs.extend(_Req(float(t), k, st.route, st.rows, works[i], (k, int(parts[i])))
                    for i, t in enumerate(times))
    reqs.sort(key=lambda r: r.arrived)
    done: dict[int, float] = {}

    machines: dict[str, Machine] = {}
    servers: dict[str, Server] = {}
    batchers: dict[str, _BatcherState] = {}
    batcher_of: dict[str, Batcher] = {}
    for st in streams:
        for step in st.route:
            if isinstance(step, Visit):
                servers[step.server.name] = step.server
                machines[step.server.machine.name] = step.server.machine
            elif isinstance(step, Batch):
                b = step.batcher
                machines[b.machine.name] = b.machine
                batchers.setdefault(b.name, _BatcherState(free=b.instances))
                batcher_of[b.name] = b
    running: dict[str, list[_Thread]] = {m: [] for m in machines}
    queues: dict[str, deque[_Req]] = {s: deque() for s in servers}
    serving: dict[str, int] = dict.fromkeys(servers, 0)
    delays: list[tuple[float, int, _Req]] = []  # a heap of (until, tie-break, request)
    tie = itertools.count()
    busy_integral = dict.fromkeys(machines, 0.0)
    runnable_integral = dict.fromkeys(machines, 0.0)
    n_batches, batch_rows = 0, 0

    now = 0.0
    i_next = 0
    end = duration_s + drain_s

    def speed(m: str) -> float:
        mach = machines[m]
        n = len(running[m])
        return 1.0 if n == 0 else min(1.0, mach.cores / (n + mach.other(now)))

    periods = [mach.period_s for mach in machines.values() if mach.levels]
    period = min(periods) if periods else math.inf

    def advance(req: _Req) -> None:
        """Move ``req`` to its next step (or finish it)."""
        while True:
            if req.step >= len(req.route):
                done[id(req)] = now - req.arrived
                return
            step = req.route[req.step]
            if isinstance(step, Delay):
                if step.seconds <= 0:
                    req.step += 1
                    continue
                heapq.heappush(delays, (now + step.seconds, next(tie), req))
                return
            if isinstance(step, Visit):
                s = step.server
                queues[s.name].append(req)
                if serving[s.name] < s.threads:
                    serving[s.name] += 1
                    serve(s)
                return
            b = step.batcher
            state = batchers[b.name]
            state.queue.append(req)
            state.enqueued.append(now)
            state.rows += req.rows
            return

    def serve(s: Server) -> None:
        """A thread of ``s`` takes the next request (or, batching, all that wait)."""
        q = queues[s.name]
        if s.per_batch is None:
            r = q.popleft()
            running[s.machine.name].append(_Thread(r.works[r.step], reqs=[r], server=s))
            return
        # the batch actor's unit: the records of one partition's fetch, the oldest first
        head = q[0].partition
        taken = [r for r in q if r.partition == head][:s.max_batch]
        if len(taken) == len(q):
            q.clear()
        else:
            chosen = set(map(id, taken))
            kept = [r for r in q if id(r) not in chosen]
            q.clear()
            q.extend(kept)
        work = float(s.per_batch.sample(rng, 1)[0]) + sum(r.works[r.step] for r in taken)
        running[s.machine.name].append(_Thread(work, reqs=taken, server=s))

    def flush_ready(b: Batcher, state: _BatcherState) -> bool:
        return bool(state.queue) and (state.rows >= b.max_rows
                                      or now >= state.enqueued[0] + b.max_wait_s - 1e-12)

    def start_batches() -> float:
        """Start every batch that is due; the earliest time a waiting batch becomes due."""
        nonlocal n_batches, batch_rows
        soonest = math.inf
        for name, b in batcher_of.items():
            state = batchers[name]
            while state.free and flush_ready(b, state):
                batch, rows = [], 0
                while state.queue and rows + state.queue[0].rows <= b.max_rows:
                    r = state.queue.popleft()
                    state.enqueued.popleft()
                    rows += r.rows
                    batch.append(r)
                if not batch:  # one submission larger than max_rows: run it alone
                    batch = [state.queue.popleft()]
                    state.enqueued.popleft()
                    rows = batch[0].rows
                state.rows -= rows
                state.free -= 1
                n_batches += 1
                batch_rows += rows
                running[b.machine.name].append(
                    _Thread(b.batch_s(rows), batch=batch, batcher=b))
            if state.free and state.queue:
                soonest = min(soonest, state.enqueued[0] + b.max_wait_s)
        return soonest

    while True:
        timer = start_batches()
        t_arrival = reqs[i_next].arrived if i_next < len(reqs) else math.inf
        t_delay = delays[0][0] if delays else math.inf
        t_done, who = math.inf, None
        speeds = {m: speed(m) for m, threads in running.items() if threads}
        for m, sp in speeds.items():
            for th in running[m]:
                t = now + th.left / sp
                if t < t_done:
                    t_done, who = t, (m, th)
        t_level = (math.floor(now / period + 1e-9) + 1) * period if periods else math.inf
        t = min(t_arrival, t_delay, t_done, timer, t_level)
        if t == math.inf or t > end:
            break
        dt = t - now
        for m, sp in speeds.items():
            threads = running[m]
            busy_integral[m] += dt * len(threads) * sp
            runnable_integral[m] += dt * len(threads)
            for th in threads:
                th.left -= dt * sp
        now = t
        if t == t_done and who is not None:
            m, th = who
            running[m].remove(th)
            if th.reqs is not None and th.server is not None:
                s = th.server
                if queues[s.name]:
                    serve(s)
                else:
                    serving[s.name] -= 1
                for r in th.reqs:
                    r.step += 1
                    advance(r)
            elif th.batch is not None and th.batcher is not None:
                batchers[th.batcher.name].free += 1
                for r in th.batch:
                    r.step += 1
                    advance(r)
        elif t == t_delay:
            _, _, r = heapq.heappop(delays)
            r.step += 1
            advance(r)
        elif t == t_arrival:
            r = reqs[i_next]
            i_next += 1
            advance(r)

    tagged = [r for r in reqs if streams[r.stream].tagged and r.arrived >= warmup_s]
    lat = np.array([done.get(id(r), math.nan) for r in tagged])
    unfinished = int(np.isnan(lat).sum())
    span = max(now, 1e-9)
    return Result(
        latency_s=np.where(np.isnan(lat), math.inf, lat) if unfinished else lat,
        unfinished=unfinished,
        busy={m: busy_integral[m] / span for m in machines},
        slowdown={m: runnable_integral[m] / busy_integral[m] if busy_integral[m] else 1.0
                  for m in machines},
        batches=n_batches, batch_rows_mean=batch_rows / n_batches if n_batches else 0.0)


def highest_rate(run: Callable[[float], Result], bound_s: float, *, lo: float, hi: float,
                 precision: float = 0.02, quantile: float = 99.0) -> tuple[float, Result]:
    """The highest rate in [lo, hi] whose ``quantile`` latency is ≤ ``bound_s``, by
    bisection (``run(rate)`` simulates one rate); ``lo`` must meet the bound."""
    best = run(lo)
    if best.p(quantile) > bound_s or best.unfinished:
        raise ValueError(f"even {lo:g}/s misses the bound in the simulation "
                         f"(p{quantile:g} {best.p(quantile) * 1000:.1f} ms)")
    while hi / lo > 1 + precision:
        mid = math.sqrt(lo * hi)
        r = run(mid)
        if r.p(quantile) <= bound_s and not r.unfinished:
            lo, best = mid, r
        else:
            hi = mid
    return lo, best
