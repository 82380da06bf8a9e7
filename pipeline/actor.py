"""The actor loop: consume, decode, handle, produce, commit the watermark.

A handler turns one input record into output messages. The loop runs many records at once
(up to the in-flight budget), produces each partition's outputs in input-offset order when
the handler asks for it, and marks an input offset done only after Kafka acknowledged
everything produced from it; the watermark of done offsets is what gets committed.
A record the handler cannot process goes to the dead-letter topic, with the reason, and
the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from pipeline import headers as H
from pipeline.flow import FlowControl
from pipeline.middleware import Middleware
from pipeline.offsets import OffsetTracker
from pipeline.transactions import PartitionTransactions
from pipeline.transport.base import (
    TP,
    CommitFailed,
    Consumer,
    Outgoing,
    Producer,
    Record,
    Transport,
)

log = structlog.get_logger("adstream.actor")


class ProducerFailed(RuntimeError):
    """Kafka did not acknowledge a message: the actor stops rather than commit past it."""


class PartitionLost(Exception):
    """The input partition was revoked while its work was in flight: the work is abandoned
    (its offset is not committed, so the partition's new owner redoes it)."""


Emit = Callable[[list[Outgoing], TP | None], Awaitable[None]]


class Handler(ABC):
    """What a role does with one record. Subclasses live in ``workers``."""

    name: str = "actor"
    #: produce each input partition's outputs in offset order (False: as they complete)
    ordered: bool = True

    async def assigned(self, tps: set[TP]) -> None:
        """``tps`` were assigned; called before any of their records is handled."""

    async def open(self, tg: asyncio.TaskGroup, emit: Emit) -> None:
        """Start background work (batchers, timers) under the actor's task group.

        ``emit(msgs, source)`` produces messages outside of ``handle`` and returns once Kafka
        acknowledged them (a handler that holds records until something happens uses it);
        ``source`` is the input partition they derive from (required for exactly-once).
        """

    async def close(self) -> None:
        """Stop background work; called after the last record is done."""

    @abstractmethod
    async def handle(self, record: Record) -> list[Outgoing]:
        """Outputs for ``record``; raise to send it to the dead-letter topic."""

    def revoked(self, tps: set[TP]) -> None:
        """``tps`` are being taken away: abandon work that waits on more input from them."""

    def rejected(self, record: Record, error: Exception) -> list[Outgoing]:
        """Extra outputs when ``record`` is dead-lettered (e.g. a ``rejected`` reply)."""
        return []

    @abstractmethod
    def dead_letter(self, record: Record, error: Exception) -> Outgoing:
        """The dead-letter message for ``record`` (bad input raises a ValueError)."""


@dataclass
class ActorSettings:
    group_id: str
    input_topics: list[str]
    dlq_topic: str = "ads.dlq"
    max_in_flight: int = 2000
    resume_in_flight: int = 1000
    max_in_flight_bytes: int = 4 * 1024 * 1024
    commit_interval_ms: int = 200
    poll_ms: int = 50
    drain_timeout_s: float = 10.0
    revoke_timeout_s: float = 5.0
    exactly_once: bool = False  # transactional outputs per input partition (Kafka only)


@dataclass
class ActorStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    commits: int = 0
    by_stage_ms: dict[str, float] = field(default_factory=dict)


class _Lane:
    """Per-partition ordering of sends: each record waits for the previous one's sends."""

    __slots__ = ("tail", "tasks")

    def __init__(self) -> None:
        self.tail: asyncio.Future[bool] | None = None
        self.tasks: set[asyncio.Task[None]] = set()


class Actor:
    """Runs one handler as a member of a consumer group until ``stop`` is set."""

    def __init__(self, transport: Transport, handler: Handler, settings: ActorSettings,
                 middleware: Sequence[Middleware] = ()) -> None:
        self.transport = transport
        self.middleware = list(middleware)
        self.handler = handler
        self.settings = settings
        self.tracker = OffsetTracker()
        self.stats = ActorStats()
        self.log = log.bind(actor=handler.name, group=settings.group_id)
        self._lanes: dict[TP, _Lane] = {}
        self._active: set[TP] = set()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._flow: FlowControl | None = None
        self._idle = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self._tx: PartitionTransactions | None = None
        if settings.exactly_once:
            self._tx = PartitionTransactions(transport, settings.group_id,
                                             f"{settings.group_id}.{handler.name}")

    # ---- rebalance listener -------------------------------------------------------------------

    async def on_assigned(self, tps: set[TP]) -> None:
        await self.handler.assigned(tps)
        if self._tx is not None:
            await self._tx.open(tps)
        self._active |= tps
        if self._flow is not None:
            self._flow.reassigned()
        self.log.info("partitions assigned", partitions=sorted(map(str, tps)))
        for m in self.middleware:
            m.on_assigned(self, tps)
        self.ready.set()

    async def on_revoked(self, tps: set[TP]) -> None:
        """Stop taking from ``tps``, finish (or, past the bound, abandon) their work, commit."""
        self._active -= tps
        self.handler.revoked(tps)
        deadline = time.monotonic() + self.settings.revoke_timeout_s
        while self.tracker.in_flight(tps) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        abandoned = 0
        for tp in tps:
            lane = self._lanes.pop(tp, None)
            if lane is not None:
                for task in list(lane.tasks):
                    abandoned += 1
                    task.cancel()
        await self._commit(tps)
        if self._tx is not None:
            await self._tx.close(tps)
        self.tracker.forget(tps)
        self.log.info("partitions revoked", partitions=sorted(map(str, tps)), abandoned=abandoned)
        for m in self.middleware:
            m.on_revoked(self, tps)

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self._producer = self.transport.producer()
        await self._producer.start()
        self._consumer = self.transport.consumer(s.input_topics, s.group_id, listener=self,
                                                 read_committed=s.exactly_once)
        self._flow = FlowControl(self._consumer, s.max_in_flight, s.resume_in_flight,
                                 on_pause=self._paused, on_resume=self._resumed,
                                 high_bytes=s.max_in_flight_bytes)
        for m in self.middleware:
            m.on_start(self)
        try:
            async with asyncio.TaskGroup() as tg:
                await self.handler.open(tg, self.emit)
                await self._consumer.start()
                committer = tg.create_task(self._commit_periodically(stop))
                await self._fetch_until(stop, tg)
                await self._drain()
                committer.cancel()
                await self.handler.close()
            await self._commit(None)
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            if self._tx is not None:
                await self._tx.close(self._tx.partitions())
            await self._producer.stop()
        for m in self.middleware:
            m.on_stop(self)
        self.log.info("actor stopped", consumed=self.stats.consumed, produced=self.stats.produced,
                      dead_lettered=self.stats.dead_lettered)

    async def _fetch_until(self, stop: asyncio.Event, tg: asyncio.TaskGroup) -> None:
        assert self._consumer is not None and self._flow is not None
        while not stop.is_set():
            room = self._flow.room()
            if room == 0:
                await self._wait_for_room(stop)
                continue
            batch = await self._consumer.getmany(self.settings.poll_ms, room)
            for tp, records in batch.items():
                if tp not in self._active:
                    if tp in self._consumer.assignment():
                        # assigned but not ready yet (the assignment hook is still running):
                        # read these again once it is
                        self._consumer.seek(tp, records[0].offset)
                    continue  # else prefetched from a partition that was revoked meanwhile
                lane = self._lanes.setdefault(tp, _Lane())
                for rec in records:
                    self._start(rec, lane, tg)

    async def _wait_for_room(self, stop: asyncio.Event) -> None:
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.poll_ms / 1000)

    def _start(self, rec: Record, lane: _Lane, tg: asyncio.TaskGroup) -> None:
        assert self._flow is not None
        self.tracker.start(rec.tp, rec.offset)
        self._flow.started(1, len(rec.value))
        self.stats.consumed += 1
        prev = lane.tail
        mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lane.tail = mine if self.handler.ordered else None
        task = tg.create_task(self._process(rec, prev, mine))
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    async def _process(
        self, rec: Record, prev: asyncio.Future[bool] | None, mine: asyncio.Future[bool]
    ) -> None:
        assert self._producer is not None and self._flow is not None
        start = time.perf_counter()
        received_ms = H.now_ms()
        error: Exception | None = None
        for m in self.middleware:
            m.before_process(self, rec)
        try:
            try:
                outputs = await self.handler.handle(rec)
            except (asyncio.CancelledError, ProducerFailed, PartitionLost):
                raise
            except Exception as e:  # noqa: BLE001 - one message's failure is that message's
                error = e
                outputs = self._dead_letter(rec, e)
            if prev is not None and not await asyncio.shield(prev):
                # the record before this one in the partition was abandoned: abandon this one
                # too, so nothing after an unsent record is sent (its redelivery keeps order)
                raise PartitionLost(str(rec.tp))
            stamp = H.stage_stamps(self.handler.name, received_ms)
            for o in outputs:
                o.headers.update(stamp)
            if self._tx is not None:
                if not self._tx.owns(rec.tp):
                    raise PartitionLost(str(rec.tp))
                async with self._tx.lock(rec.tp):
                    acks = await self._tx.send(rec.tp, outputs)
                    self._tx.mark_sent(rec.tp, rec.offset)
            else:
                acks = [await self._producer.send(o) for o in outputs]
            mine.set_result(True)
            if acks:
                await asyncio.gather(*acks)
            self.stats.produced += len(acks)
            self.tracker.done(rec.tp, rec.offset)
            elapsed = time.perf_counter() - start
            for m in self.middleware:
                m.after_process(self, rec, outputs, error, elapsed)
        except PartitionLost:
            self.log.debug("abandoned work of a revoked partition", where=rec.where())
        finally:
            if not mine.done():
                mine.set_result(False)  # never block the next record of the lane
            self._flow.finished(1, len(rec.value))
            self._idle.set()

    async def emit(self, msgs: list[Outgoing], source: TP | None = None) -> None:
        """Produce ``msgs`` now (in ``source``'s transaction when exactly-once) and wait for
        Kafka's acknowledgement."""
        assert self._producer is not None
        for msg in msgs:
            msg.headers[H.stage_out(self.handler.name)] = str(H.now_ms()).encode()
        try:
            if self._tx is not None:
                if source is None or not self._tx.owns(source):
                    raise PartitionLost(f"cannot emit for {source}: not owned")
                async with self._tx.lock(source):
                    acks = await self._tx.send(source, msgs)
            else:
                acks = [await self._producer.send(m) for m in msgs]
            await asyncio.gather(*acks)
        except (ProducerFailed, PartitionLost):
            raise
        except Exception as e:
            raise ProducerFailed(f"producing to {msgs[0].topic} failed: {e}") from e
        self.stats.produced += len(msgs)
        for m in self.middleware:
            for msg in msgs:
                m.on_emit(self, msg)

    def _paused(self, tps: set[TP]) -> None:
        self.log.info("paused partitions (in-flight budget reached)", in_flight=self.in_flight)
        for m in self.middleware:
            m.on_pause(self, tps)

    def _resumed(self, tps: set[TP]) -> None:
        for m in self.middleware:
            m.on_resume(self, tps)

    @property
    def in_flight(self) -> int:
        return self._flow.in_flight if self._flow is not None else 0

    @property
    def paused(self) -> set[TP]:
        return set(self._flow.paused) if self._flow is not None else set()

    def _dead_letter(self, rec: Record, error: Exception) -> list[Outgoing]:
        self.stats.dead_lettered += 1
        if isinstance(error, ValueError):  # bad input: expected, no traceback needed
            self.log.warning("dead letter", where=rec.where(), reason=str(error))
        else:
            self.log.error("dead letter: handler failed", where=rec.where(),
                           error=f"{type(error).__name__}: {error}", exc_info=error)
        return [self.handler.dead_letter(rec, error), *self.handler.rejected(rec, error)]

    async def _drain(self) -> None:
        """Stop fetching, wait (bounded) for in-flight work so its offsets can be committed."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.tracker.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = self.tracker.in_flight()
        if left:
            self.log.warning("drain timed out; abandoning in-flight work", in_flight=left)
            for lane in self._lanes.values():
                for task in list(lane.tasks):
                    task.cancel()

    async def _commit_transactions(self, tps: set[TP] | None) -> None:
        """Exactly-once: commit each owned partition's transaction with its offset."""
        assert self._tx is not None
        async with self._commit_lock:
            committed: dict[TP, int] = {}
            for tp in sorted(self._tx.partitions() if tps is None else
                             tps & self._tx.partitions()):
                async with self._tx.lock(tp):
                    if self.handler.ordered:
                        offset = self._tx.sent_upto(tp)
                    else:
                        offset = self.tracker.to_commit({tp}).get(tp)
                    try:
                        await self._tx.commit(tp, offset)
                    except Exception as e:
                        raise ProducerFailed(f"committing the transaction of {tp} failed: "
                                             f"{e}") from e
                    if offset is not None:
                        committed[tp] = offset
            if committed:
                self.tracker.mark_committed(committed)
                self.stats.commits += 1
                for m in self.middleware:
                    m.on_commit(self, committed)

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            await self._commit(None)

    async def _commit(self, tps: set[TP] | None) -> None:
        """Commit the watermarks that moved: every output below them is already acknowledged."""
        assert self._consumer is not None
        if self._tx is not None:
            await self._commit_transactions(tps)
            return
        async with self._commit_lock:
            offsets = self.tracker.to_commit(tps)
            owned = self._consumer.assignment()
            offsets = {tp: off for tp, off in offsets.items() if tp in owned}
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except CommitFailed as e:
                # the group moved on (e.g. this process was paused past the session timeout):
                # the new owners redo the work from the last committed offsets
                self.log.warning("commit refused; partitions belong to another member now",
                                 reason=str(e))
                return
            self.tracker.mark_committed(offsets)
            self.stats.commits += 1
            for m in self.middleware:
                m.on_commit(self, offsets)
