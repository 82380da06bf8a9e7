"""The actor loop: consume, hand each fetch to the handler as one batch, produce, commit.

The unit of work is a batch: the records of one fetch for one partition, in offset order.
The handler returns what each input record produced, so ordering, dead-lettering and the
commit watermark stay exact per record while the work itself (decode, features, scoring,
encoding, producing) is done once per batch, on arrays. Several batches are in flight at
once (up to the in-flight budget); each partition's outputs are produced in input-offset
order when the handler asks for it, and an input offset is marked done only after Kafka
acknowledged everything produced from it. A record the handler cannot process goes to the
dead-letter topic with the reason, alone: its batch-mates go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from pipeline import headers
from pipeline.admin import AdminHandler
from pipeline.config import ActorSection
from pipeline.flow import FlowControl
from pipeline.middleware import Middleware
from pipeline.offsets import OffsetTracker
from pipeline.tracing import begin_batch
from pipeline.transactions import PartitionTransactions
from pipeline.transport.base import (
    TP,
    CommitFailed,
    Consumer,
    Fenced,
    Outgoing,
    Producer,
    Record,
    Transport,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger("adstream.actor")


class ProducerFailed(RuntimeError):
    """Kafka did not acknowledge a message: the actor stops rather than commit past it."""


class PartitionLost(Exception):
    """The input partition was revoked while its work was in flight: the work is abandoned
    (its offset is not committed, so the partition's new owner redoes it)."""


@dataclass(slots=True)
class Held:
    """A record whose work finishes later: it is done when ``until`` resolves (abandoned when
    ``until`` is cancelled). ``send`` are messages produced with the batch now; the actor
    resolves ``until`` once they are acknowledged (the aggregator answers a request this way
    from the record that completes it, and every earlier record of the request waits on the
    same future)."""

    until: asyncio.Future[None]
    send: list[Outgoing] | None = None


Result = list[Outgoing] | Exception | Held
"""What one input record produced: its outputs, the reason it is dead-lettered, or Held."""

Send = Callable[[list[Outgoing], TP | None], Awaitable[None]]
"""Produce messages outside of a batch (a deadline watcher) and wait for the acknowledgement;
the TP is the input partition they derive from (its transaction when exactly-once)."""


class Handler(ABC):
    """What a role does with a batch of records. Subclasses live in ``workers``."""

    name: str = "actor"
    #: produce each input partition's outputs in offset order (False: as they complete)
    ordered: bool = True
    #: returns Held results: exactly-once commits the done watermark (the handler makes a
    #: replay of what a transaction already answered harmless), not "everything sent"
    holds: bool = False
    #: where the handler's spans go; None (the default) is tracing off. When set, each
    #: batch is handed over with its clock (``pipeline.tracing.current_batch``)
    tracer: Tracer | None = None

    @abstractmethod
    async def handle(self, records: Sequence[Record]) -> list[Result]:
        """One :data:`Result` per record, in order. A record's exception is returned, not
        raised; an exception raised here fails the batch, which is then handled one record
        at a time so that only the bad record is dead-lettered."""

    @abstractmethod
    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        """What to produce when ``record`` is dead-lettered: the dead letter and, where the
        client can be addressed, a ``rejected`` reply."""

    # optional hooks (B027): each does nothing unless the handler overrides it

    async def open(self, tg: asyncio.TaskGroup, send: Send) -> None:  # noqa: B027
        """Start background work (batchers, timers) under the actor's task group."""

    async def close(self) -> None:  # noqa: B027
        """Stop background work; called after the last record is done."""

    async def assigned(self, tps: set[TP]) -> None:  # noqa: B027
        """``tps`` were assigned; called before any of their records is handled."""

    def admin_routes(self) -> Mapping[str, AdminHandler]:
        """Routes this handler serves under ``/admin/<name>`` of the process's endpoint."""
        return {}

    def revoked(self, tps: set[TP]) -> None:  # noqa: B027
        """``tps`` are being taken away: abandon work that waits on more input from them."""


@dataclass
class ActorStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    commits: int = 0
    batches: int = 0


@dataclass(slots=True)
class _Lane:
    """Per-partition ordering of sends: each batch waits for the previous one's sends."""

    last_sent: asyncio.Future[bool] | None = None  # the newest batch's "sends done"
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Actor:
    """Runs one handler as a member of a consumer group until ``stop`` is set."""

    POLL_MS = 50

    def __init__(self, transport: Transport, handler: Handler, group_id: str,
                 input_topics: list[str], settings: ActorSection | None = None,
                 middleware: Sequence[Middleware] = (), *,
                 lost_after_s: float | None = None) -> None:
        """``lost_after_s``: a stall of this process this long (the group's session
        timeout) means its partitions were given to others: what it held is abandoned."""
        self.transport = transport
        self.handler = handler
        self.group_id = group_id
        self.input_topics = list(input_topics)
        self.settings = settings or ActorSection()
        self.middleware = list(middleware)
        self.tracker = OffsetTracker()
        self.stats = ActorStats()
        self.log = log.bind(actor=handler.name, group=group_id)
        self._lanes: dict[TP, _Lane] = {}
        self._active: set[TP] = set()
        self._draining: set[TP] = set()  # revoked, their in-flight work finishing (bounded)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._flow: FlowControl | None = None
        self._progress = asyncio.Event()  # set whenever a record settles (done or abandoned)
        self._commit_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.lost_after_s = lost_after_s
        self._tick = time.monotonic()  # the loop's own clock, to notice this process stalled
        self._stalled = False  # since a stall past the session: owns nothing until reassigned
        self._tx: PartitionTransactions | None = None
        if self.settings.delivery == "exactly_once":
            self._tx = PartitionTransactions(transport, group_id, f"{group_id}.{handler.name}")

    # ---- middleware -------------------------------------------------------------------------

    def _hook(self, name: str, *args: Any) -> None:
        """Call hook ``name`` of every middleware; a failing hook is logged, never fatal."""
        for m in self.middleware:
            try:
                getattr(m, name)(self, *args)
            except Exception as e:  # observability must not stop the work
                self.log.error("middleware hook failed", hook=f"{type(m).__name__}.{name}",
                               error=f"{type(e).__name__}: {e}")

    # ---- rebalance listener -----------------------------------------------------------------

    async def on_assigned(self, tps: set[TP]) -> None:
        await self.handler.assigned(tps)
        if self._tx is not None:
            await self._tx.open(tps)
        self._stalled = False
        self._active |= tps
        if self._flow is not None:
            self._flow.reassigned()
        self.log.info("partitions assigned", partitions=sorted(map(str, tps)))
        self._hook("on_assigned", tps)
        self.ready.set()

    async def on_revoked(self, tps: set[TP]) -> None:
        """Stop taking from ``tps``, finish (or, past the bound, abandon) their work, commit."""
        self._active -= tps
        self._draining |= tps
        self.handler.revoked(tps)
        await self._settle(tps, self.settings.revoke_timeout_s)
        abandoned = self.tracker.unsettled(tps)
        for tp in tps:
            lane = self._lanes.pop(tp, None)
            if lane is not None:
                for task in list(lane.tasks):
                    task.cancel()
        await self._commit(tps)  # still draining: this member may commit what it finished
        self._draining -= tps
        if self._tx is not None:
            await self._tx.close(tps)
        self.tracker.forget(tps)
        self.log.info("partitions revoked", partitions=sorted(map(str, tps)), abandoned=abandoned)
        self._hook("on_revoked", tps)

    async def _settle(self, tps: set[TP] | None, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every started record of ``tps`` is settled."""
        deadline = time.monotonic() + timeout_s
        while self.tracker.unsettled(tps):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)

    # ---- ownership ---------------------------------------------------------------------------

    def owns(self, tp: TP) -> bool:
        """Whether this member may still produce for ``tp``: it is assigned here and this
        process has not stalled past the session since (a member paused or cut off that
        long was replaced; what it held is its replacement's to send, not a zombie's)."""
        self._notice_stall()
        if self._stalled:
            return False
        return tp in self._active or tp in self._draining

    def _notice_stall(self) -> None:
        """Mark this member stalled when the loop's clock last ticked more than a session ago.

        Called by ``owns`` and by the clock itself before it ticks: whichever runs first
        after the process resumes sees the gap, so no send slips through between the two."""
        if self.lost_after_s is None or self._stalled:
            return
        gap = time.monotonic() - self._tick
        if gap > self.lost_after_s:
            self._stalled = True
            self.log.warning("this process stalled past the group's session; abandoning "
                             "the work it held until it is assigned partitions again",
                             stalled_s=round(gap, 1))

    async def _keep_time(self, stop: asyncio.Event) -> None:
        """Tick the loop's clock; a tick that comes late is how a stall shows."""
        while not stop.is_set():
            self._notice_stall()
            self._tick = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self._producer = self.transport.producer()
        await self._producer.start()
        self._consumer = self.transport.consumer(self.input_topics, self.group_id,
                                                 listener=self,
                                                 read_committed=self._tx is not None)
        self._flow = FlowControl(self._consumer, s.max_in_flight, s.resume_in_flight,
                                 on_pause=self._paused, on_resume=self._resumed,
                                 high_bytes=s.max_in_flight_bytes)
        self._hook("on_start")
        try:
            async with asyncio.TaskGroup() as tg:
                await self.handler.open(tg, self.send)
                await self._consumer.start()
                committer = tg.create_task(self._commit_periodically(stop))
                self._tick = time.monotonic()  # the wait for a broker or a takeover is no stall
                clock = tg.create_task(self._keep_time(stop))
                await self._fetch_until(stop, tg)
                await self._drain()
                committer.cancel()
                clock.cancel()
                await self.handler.close()
            await self._commit(None)
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            if self._tx is not None:
                await self._tx.close(self._tx.partitions())
            await self._producer.stop()
        self._hook("on_stop")
        self.log.info("actor stopped", consumed=self.stats.consumed, produced=self.stats.produced,
                      dead_lettered=self.stats.dead_lettered, batches=self.stats.batches)

    async def _fetch_until(self, stop: asyncio.Event, tg: asyncio.TaskGroup) -> None:
        assert self._consumer is not None and self._flow is not None
        while not stop.is_set():
            room = self._flow.room()
            if room == 0:
                await self._wait_for_room()
                continue
            fetched = await self._consumer.getmany(self.POLL_MS, room)
            for tp, records in fetched.items():
                if tp not in self._active:
                    if tp in self._consumer.assignment():
                        # assigned but not ready yet (the assignment hook is still running):
                        # read these again once it is
                        self._consumer.seek(tp, records[0].offset)
                    continue  # else prefetched from a partition that was revoked meanwhile
                self._start(tp, records, tg)

    async def _wait_for_room(self) -> None:
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), self.POLL_MS / 1000)

    def _start(self, tp: TP, records: list[Record], tg: asyncio.TaskGroup) -> None:
        assert self._flow is not None
        self.tracker.start_many(tp, [r.offset for r in records])
        n_bytes = sum(len(r.value) for r in records)
        self._flow.started(len(records), n_bytes)
        self.stats.consumed += len(records)
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = _Lane()
        previous_sent = lane.last_sent
        sends_done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lane.last_sent = sends_done if self.handler.ordered else None
        task = tg.create_task(self._process(tp, records, previous_sent, sends_done))
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    async def _handle(self, records: list[Record]) -> list[Result]:
        """The handler's results; a batch that fails as a whole is retried record by record,
        so the record that caused it is dead-lettered alone."""
        try:
            results = await self.handler.handle(records)
            if len(results) != len(records):
                raise RuntimeError(f"{self.handler.name} returned {len(results)} results for "
                                   f"{len(records)} records")
            return results
        except (asyncio.CancelledError, ProducerFailed, PartitionLost):
            raise
        except Exception as e:  # find the record(s) that caused it
            if len(records) == 1:
                return [e]
        out: list[Result] = []
        for rec in records:
            out.extend(await self._handle([rec]))
        return out

    async def _process(self, tp: TP, records: list[Record],
                       previous_sent: asyncio.Future[bool] | None,
                       sends_done: asyncio.Future[bool]) -> None:
        assert self._flow is not None
        start = time.perf_counter()
        received_ns = time.time_ns()
        received = str(received_ns // 1_000_000).encode()
        clock = begin_batch(received_ns) if self.handler.tracer is not None else None
        self._hook("before_batch", records)
        n_bytes = sum(len(r.value) for r in records)
        settled = False  # the batch's records were marked done (or handed to their futures)
        held: list[tuple[Record, Held]] = []
        try:
            results = await self._handle(records)
            if previous_sent is not None and not await asyncio.shield(previous_sent):
                # the batch before this one in the partition was abandoned: abandon this one
                # too, so nothing after an unsent record is sent (its redelivery keeps order)
                raise PartitionLost(str(tp))
            outputs: list[Outgoing] = []
            done: list[int] = []
            errors = 0
            for rec, res in zip(records, results, strict=True):
                if isinstance(res, Held):
                    held.append((rec, res))
                    if res.send:
                        outputs.extend(res.send)
                    continue
                if isinstance(res, Exception):
                    errors += 1
                    res = self._dead_letter(rec, res)
                outputs.extend(res)
                done.append(rec.offset)
            stamp_in, stamp_out = headers.stage_in(self.handler.name), \
                headers.stage_out(self.handler.name)
            sent_ns = time.time_ns()
            sent = str(sent_ns // 1_000_000).encode()
            for o in outputs:
                o.headers[stamp_in] = received
                o.headers[stamp_out] = sent
            acked = await self._send_batch(tp, outputs, records[-1].offset)
            sends_done.set_result(True)
            if clock is not None:  # the stage spans end where the out stamp was read
                clock.sent(sent_ns)
            try:
                await acked
            except Exception as e:
                for _, h in held:
                    if h.send and not h.until.done():
                        h.until.set_exception(e)
                if isinstance(e, Fenced):
                    raise await self._fenced(tp, e) from None
                raise ProducerFailed(f"producing the outputs of {tp} failed: {e}") from e
            self.stats.produced += len(outputs)
            self.stats.batches += 1
            self.stats.dead_lettered += errors
            self.tracker.done_many(tp, done)
            self._flow.finished(len(done), n_bytes - sum(len(r.value) for r, _ in held))
            settled = True
            for rec, h in held:  # waiting records settle on their own, whenever that is
                if h.send and not h.until.done():
                    h.until.set_result(None)
                h.until.add_done_callback(self._settler(tp, rec))
            self._progress.set()
            self._hook("after_batch", records, outputs, errors, time.perf_counter() - start)
        except PartitionLost:
            self.log.debug("abandoned work of a revoked partition", partition=str(tp))
        finally:
            for _, h in held:  # answers not sent: whoever waits on them is abandoned too
                if h.send and not h.until.done():
                    h.until.cancel()
            if not sends_done.done():
                sends_done.set_result(False)  # never block the next batch of the lane
            if not settled:
                self._abandon(tp, records)

    def _settler(self, tp: TP, rec: Record) -> Callable[[asyncio.Future[None]], None]:
        def settle(fut: asyncio.Future[None]) -> None:
            assert self._flow is not None
            if fut.cancelled() or fut.exception() is not None:
                self.tracker.abandon(tp, rec.offset)
            else:
                self.tracker.done(tp, rec.offset)
            self._flow.finished(1, len(rec.value))
            self._progress.set()
        return settle

    def _abandon(self, tp: TP, records: list[Record]) -> None:
        assert self._flow is not None
        for rec in records:
            self.tracker.abandon(tp, rec.offset)
        self._flow.finished(len(records), sum(len(r.value) for r in records))
        self._progress.set()

    async def _send_batch(self, tp: TP, outputs: list[Outgoing],
                          last_offset: int) -> Awaitable[None]:
        """Hand ``outputs`` (derived from ``tp`` up to ``last_offset``) to the producer in one
        go, so one produce request carries them; returns what resolves on acknowledgement."""
        assert self._producer is not None
        if not self.owns(tp):
            raise PartitionLost(str(tp))
        if self._tx is None:
            return await self._producer.send_many(outputs)
        if not self._tx.owns(tp):
            raise PartitionLost(str(tp))
        async with self._tx.lock(tp):
            try:
                acked = await self._tx.send(tp, outputs)
            except Fenced as e:
                raise await self._fenced(tp, e) from None
            if not self.handler.holds:
                self._tx.mark_sent(tp, last_offset)
        return acked

    async def send(self, msgs: list[Outgoing], source: TP | None = None) -> None:
        """Produce ``msgs`` now (in ``source``'s transaction when exactly-once) and wait for
        Kafka's acknowledgement: the send path of a handler's background work."""
        assert self._producer is not None
        stamp = str(headers.now_ms()).encode()
        for msg in msgs:
            msg.headers[headers.stage_out(self.handler.name)] = stamp
        try:
            if source is not None and not self.owns(source):
                raise PartitionLost(f"cannot send for {source}: not owned")
            if self._tx is not None:
                if source is None or not self._tx.owns(source):
                    raise PartitionLost(f"cannot send for {source}: not owned")
                async with self._tx.lock(source):
                    acked = await self._tx.send(source, msgs)
            else:
                acked = await self._producer.send_many(msgs)
            await acked
        except (ProducerFailed, PartitionLost):
            raise
        except Fenced as e:
            assert source is not None
            raise await self._fenced(source, e) from None
        except Exception as e:
            raise ProducerFailed(f"producing to {msgs[0].topic} failed: {e}") from e
        self.stats.produced += len(msgs)
        self._hook("on_send", msgs)

    def _paused(self, tps: set[TP]) -> None:
        self.log.info("paused partitions (in-flight budget reached)", in_flight=self.in_flight)
        self._hook("on_pause", tps)

    def _resumed(self, tps: set[TP]) -> None:
        self._hook("on_resume", tps)

    @property
    def in_flight(self) -> int:
        return self._flow.in_flight if self._flow is not None else 0

    @property
    def paused(self) -> set[TP]:
        return set(self._flow.paused) if self._flow is not None else set()

    def _dead_letter(self, rec: Record, error: Exception) -> list[Outgoing]:
        if isinstance(error, ValueError):  # bad input: expected, no traceback needed
            self.log.warning("dead letter", where=rec.where(), reason=str(error))
        else:
            self.log.error("dead letter: handler failed", where=rec.where(),
                           error=f"{type(error).__name__}: {error}", exc_info=error)
        return self.handler.dead_letter(rec, error)

    async def _drain(self) -> None:
        """Stop fetching, wait (bounded) for in-flight work so its offsets can be committed."""
        await self._settle(None, self.settings.drain_timeout_s)
        left = self.tracker.unsettled(None)
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
                if not self.owns(tp):
                    continue  # a stalled member commits nothing; the new owner redoes it
                async with self._tx.lock(tp):
                    if not self.handler.holds:
                        offset = self._tx.sent_upto(tp)
                    else:
                        offset = self.tracker.to_commit({tp}).get(tp)
                    try:
                        await self._tx.commit(tp, offset)
                    except Fenced as e:
                        await self._fenced(tp, e)
                        continue
                    except Exception as e:
                        raise ProducerFailed(f"committing the transaction of {tp} failed: "
                                             f"{e}") from e
                    if offset is not None:
                        committed[tp] = offset
            if committed:
                self.tracker.mark_committed(committed)
                self.stats.commits += 1
                self._hook("on_commit", committed)

    async def _fenced(self, tp: TP, error: Fenced) -> PartitionLost:
        """Exactly-once: ``tp``'s producer was fenced, so ``tp`` has another owner: drop the
        producer, abandon ``tp``'s work, rejoin the group (which says what this member
        owns now). One line per fencing, however many sends and commits hit it."""
        assert self._tx is not None and self._consumer is not None
        if self._tx.owns(tp):
            self._active.discard(tp)
            await self._tx.discard(tp)
            self._consumer.rejoin()
            self.log.warning("producer fenced: another member owns the partition now; its "
                             "work is abandoned and this member rejoins the group",
                             partition=str(tp), reason=str(error))
        return PartitionLost(str(tp))

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.commit_interval_ms / 1000)
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
            self._hook("on_commit", offsets)
