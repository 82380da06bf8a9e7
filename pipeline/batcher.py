"""Dynamic batching: rows of many requests form one model batch (after Triton's batcher).

Callers submit arrays with the same number of rows (one request's chunk); a collector
joins submissions until ``max_rows`` or ``max_wait_ms`` after the first one, or earlier
when the oldest deadline is near, and runs the batch on a free model instance in a worker
thread. While every instance is busy, submissions keep accumulating, so batches grow with
load. A submission's rows are never split across batches. The queue is bounded in rows:
``submit`` waits when it is full, which is the backpressure the actor's budget sees.

Spill (optional): a second set of instances (e.g. CPU sessions beside a GPU) that takes a
batch only while every primary instance is busy and the queue has stayed above
``spill_queue_rows`` for ``spill_after_ms``; what they run is counted in ``stats``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

ModelFn = Callable[..., np.ndarray]
BatchObserver = Callable[[int, float, list[float]], None]
"""Called after each batch ran: (rows, model seconds, each submission's seconds queued)."""


Input = np.ndarray | list[np.ndarray]
"""One model input of a submission: an array, or pieces joined along rows (zero-copy views
of the messages they came from, joined once, in the model's thread)."""


def _rows(x: Input) -> int:
    return int(x.shape[0]) if isinstance(x, np.ndarray) else sum(int(p.shape[0]) for p in x)


def _join(pieces: list[np.ndarray]) -> np.ndarray:
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


@dataclass(slots=True, frozen=True)
class Timing:
    """Where one submission's time went (epoch ns): queued from ``queued_ns`` until its
    batch started at ``started_ns``, then joined and scored until ``ended_ns``."""

    queued_ns: int
    started_ns: int
    ended_ns: int


class BatcherClosed(RuntimeError):
    """The batcher was closed before it took the submission (e.g. its model was swapped
    out); the caller may submit it elsewhere."""


@dataclass(slots=True)
class _Item:
    arrays: tuple[Input, ...]
    rows: int
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future[np.ndarray]
    enqueued: float
    priority: int = 0
    count: int = 1  # the callers' units (chunks) it stands for, in the queue-wait metric
    queued_ns: int = 0  # epoch ns when submitted, for submit_timed (0: not timed)
    timing: Timing | None = None


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    sizes: list[int] = field(default_factory=list)
    queue_wait_s: float = 0.0
    compute_s: float = 0.0
    spilled_batches: int = 0
    spilled_rows: int = 0


class DynamicBatcher:
    """Batches submissions for ``instances`` model instances, one worker thread each."""

    def __init__(
        self,
        instances: Sequence[ModelFn],
        *,
        max_rows: int,
        max_wait_ms: float,
        max_queue_rows: int | None = None,
        deadline_margin_ms: float = 5.0,
        on_batch: BatchObserver | None = None,
        spill: Sequence[ModelFn] = (),
        spill_queue_rows: int | None = None,
        spill_after_ms: float = 5.0,
    ) -> None:
        if not instances:
            raise ValueError("the batcher needs at least one model instance")
        if max_rows <= 0 or max_wait_ms < 0:
            raise ValueError("max_rows must be > 0 and max_wait_ms >= 0")
        if spill_after_ms < 0 or (spill_queue_rows is not None and spill_queue_rows < 0):
            raise ValueError("spill_queue_rows and spill_after_ms must be >= 0")
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows or 4 * max_rows
        self.margin_s = deadline_margin_ms / 1000
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._models = [*instances, *spill]
        self._n_primary = len(instances)
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self._n_primary):
            self._free.put_nowait(i)
        self._spill_free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self._n_primary, len(self._models)):
            self._spill_free.put_nowait(i)
        self.spill_queue_rows = max_rows if spill_queue_rows is None else spill_queue_rows
        self.spill_after_s = spill_after_ms / 1000
        self._over_since: float | None = None  # since when the queue is above the spill bound
        self._released = asyncio.Event()
        self._pool = ThreadPoolExecutor(len(self._models), thread_name_prefix="model")
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, *arrays: Input, deadline: float | None = None,
                     priority: int = 0, count: int = 1) -> np.ndarray:
        """Score ``arrays`` (same row count; each an array or a list of row pieces) in some
        batch; returns this submission's rows.

        Higher ``priority`` submissions are batched before lower ones that wait (under
        overload the queue serves them first); equal priorities keep arrival order.
        ``count``: how many of the caller's units (chunks) the submission joins."""
        return await self._submit(arrays, deadline, priority, count, None)

    async def submit_timed(self, *arrays: Input, deadline: float | None = None,
                           priority: int = 0, count: int = 1) -> tuple[np.ndarray, Timing]:
        """:meth:`submit`, with where the submission's time went (for tracing spans)."""
        item: list[_Item] = []
        out = await self._submit(arrays, deadline, priority, count, item)
        assert item[0].timing is not None
        return out, item[0].timing

    async def _submit(self, arrays: tuple[Input, ...], deadline: float | None, priority: int,
                      count: int, timed: list[_Item] | None) -> np.ndarray:
        rows = _rows(arrays[0])
        if rows > self.max_rows:
            raise ValueError(f"{rows} rows in one submission exceed max_rows={self.max_rows}")
        if self._closed:
            raise BatcherClosed("batcher is closed")
        while self._queued_rows + rows > self.max_queue_rows and self._queued_rows:
            self._room.clear()
            await self._room.wait()
            if self._closed:
                raise BatcherClosed("batcher closed while the submission waited for room")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        item = _Item(arrays, rows, deadline, fut, time.monotonic(), priority, count)
        if timed is not None:
            item.queued_ns = time.time_ns()
            timed.append(item)
        self._enqueue(item)
        self._queued_rows += rows
        self._track_spill_bound()
        self._arrived.set()
        return await fut

    def _enqueue(self, item: _Item) -> None:
        q = self._queue
        if not q or q[-1].priority >= item.priority:
            q.append(item)
            return
        pos = len(q)
        while pos > 0 and q[pos - 1].priority < item.priority:
            pos -= 1
        q.insert(pos, item)

    def close(self) -> None:
        """Finish what is queued, then let :meth:`run` return."""
        self._closed = True
        self._arrived.set()

    async def run(self) -> None:
        """The collector: take an instance, gather a batch, run it; until closed and empty."""
        try:
            while True:
                instance = await self._acquire()
                batch = await self._gather()
                if batch is None:
                    break
                task = asyncio.create_task(self._execute(instance, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._running:
                await asyncio.gather(*self._running)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _track_spill_bound(self) -> None:
        if self._queued_rows <= self.spill_queue_rows:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = time.monotonic()

    async def _acquire(self) -> int:
        """A free primary instance; a spill instance instead while every primary one is busy
        and the queue has stayed above the spill bound long enough."""
        if self._n_primary == len(self._models):
            return await self._free.get()
        while True:
            if not self._free.empty():
                return self._free.get_nowait()
            if self._spill_free.empty() or self._closed:
                wait: float | None = None
            elif self._over_since is None:
                wait = None  # the next submission or release wakes this
            else:
                wait = self._over_since + self.spill_after_s - time.monotonic()
                if wait <= 0:
                    return self._spill_free.get_nowait()
            if self._closed and self._spill_free.qsize() == len(self._models) - self._n_primary:
                return await self._free.get()
            self._released.clear()
            self._arrived.clear()
            waiters = [asyncio.ensure_future(self._released.wait()),
                       asyncio.ensure_future(self._arrived.wait())]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _gather(self) -> list[_Item] | None:
        while not self._queue:
            if self._closed:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        flush_at = self._queue[0].enqueued + self.max_wait_s
        while self._queued_rows < self.max_rows and not self._closed:
            deadlines = [it.deadline for it in self._queue if it.deadline is not None]
            at = min([flush_at, *(d - self.margin_s for d in deadlines)])
            wait = at - time.monotonic()
            if wait <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                break
        batch: list[_Item] = []
        rows = 0
        while self._queue and rows + self._queue[0].rows <= self.max_rows:
            item = self._queue.popleft()
            rows += item.rows
            batch.append(item)
        self._queued_rows -= rows
        self._track_spill_bound()
        self._room.set()
        return batch

    async def _execute(self, instance: int, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        start_ns = time.time_ns()
        try:
            live = [it for it in batch if not it.future.cancelled()]
            if not live:
                return
            n_inputs = len(live[0].arrays)
            pieces: list[list[np.ndarray]] = [[] for _ in range(n_inputs)]
            for it in live:
                for k, x in enumerate(it.arrays):
                    if isinstance(x, np.ndarray):
                        pieces[k].append(x)
                    else:
                        pieces[k].extend(x)
            model = self._models[instance]
            # joined in the model's thread: a batch's copy never holds up the event loop
            out = await loop.run_in_executor(
                self._pool, lambda: model(*[_join(p) for p in pieces]))
            compute_s = time.monotonic() - start
            waits = [w for it in live for w in [start - it.enqueued] * it.count]
            self.stats.compute_s += compute_s
            self.stats.queue_wait_s += sum(waits)
            self.stats.batches += 1
            rows = sum(it.rows for it in live)
            self.stats.rows += rows
            if instance >= self._n_primary:
                self.stats.spilled_batches += 1
                self.stats.spilled_rows += rows
            if len(self.stats.sizes) < 100_000:
                self.stats.sizes.append(rows)
            pos = 0
            end_ns = time.time_ns()
            for it in live:
                if it.queued_ns:
                    it.timing = Timing(it.queued_ns, start_ns, end_ns)
                if not it.future.done():
                    it.future.set_result(out[pos:pos + it.rows])
                pos += it.rows
            if self.on_batch is not None:
                self.on_batch(rows, compute_s, waits)
        except Exception as e:  # every submission of the batch learns why
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        finally:
            (self._free if instance < self._n_primary else self._spill_free).put_nowait(instance)
            self._released.set()
