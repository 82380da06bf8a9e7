"""An in-process broker with Kafka's semantics, for unit tests and machines without Java.

Topics have partitions with offsets; consumer groups assign partitions to members (range
assignment, eager rebalance through the members' listeners) and keep committed offsets.
Everything lives in one event loop; a broker is named by its URL (``memory://name``).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from dataclasses import dataclass, field

from pipeline.headers import now_ms
from pipeline.transport.base import (
    TP,
    CommitFailed,
    Consumer,
    Outgoing,
    Producer,
    RebalanceListener,
    Record,
    Transport,
)

_BROKERS: dict[str, MemoryBroker] = {}


def partition_for(key: bytes | None, n: int, counter: int) -> int:
    """Keyed messages hash to a fixed partition; keyless ones go round-robin."""
    if key is None:
        return counter % n
    return zlib.crc32(key) % n


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TP, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MemoryBroker:
    """Partition logs, consumer groups, committed offsets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.topics: dict[str, list[list[Record]]] = {}
        self.groups: dict[str, _Group] = {}
        self._changed = asyncio.Event()  # replaced by a fresh one at every notify
        self._rr = 0

    @classmethod
    def get(cls, name: str) -> MemoryBroker:
        if name not in _BROKERS:
            _BROKERS[name] = cls(name)
        return _BROKERS[name]

    @classmethod
    def drop(cls, name: str) -> None:
        _BROKERS.pop(name, None)

    def create(self, topic: str, partitions: int) -> bool:
        if topic in self.topics:
            return False
        self.topics[topic] = [[] for _ in range(partitions)]
        return True

    def append(self, msg: Outgoing) -> Record:
        if msg.topic not in self.topics:
            raise KeyError(f"topic {msg.topic!r} does not exist on memory://{self.name}")
        parts = self.topics[msg.topic]
        self._rr += 1
        p = msg.partition if msg.partition is not None else partition_for(
            msg.key, len(parts), self._rr)
        log = parts[p]
        rec = Record(msg.topic, p, len(log), msg.key, msg.value, dict(msg.headers),
                     now_ms())
        log.append(rec)
        return rec

    async def notify(self) -> None:
        """Wake every reader waiting for new records (no lock: an event per generation)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, timeout_s: float) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)

    def end_offset(self, tp: TP) -> int:
        return len(self.topics[tp.topic][tp.partition])

    async def join(self, group_id: str, member: MemoryConsumer) -> None:
        group = self.groups.setdefault(group_id, _Group())
        async with group.lock:
            await self._revoke_all(group)
            group.members.append(member)
            await self._assign_all(group)

    async def leave(self, group_id: str, member: MemoryConsumer) -> None:
        group = self.groups[group_id]
        async with group.lock:
            await self._revoke_all(group)
            group.members.remove(member)
            await self._assign_all(group)

    async def _revoke_all(self, group: _Group) -> None:
        for m in group.members:
            await m._set_assignment(set())

    async def _assign_all(self, group: _Group) -> None:
        """Range assignment per topic, as Kafka's default assignor does."""
        plan: dict[int, set[TP]] = {id(m): set() for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics})
        for topic in topics:
            subs = [m for m in group.members if topic in m.topics]
            n = len(self.topics.get(topic, []))
            if not subs:
                continue
            per, extra = divmod(n, len(subs))
            start = 0
            for i, m in enumerate(subs):
                count = per + (1 if i < extra else 0)
                plan[id(m)].update(TP(topic, p) for p in range(start, start + count))
                start += count
        for m in group.members:
            positions = {tp: group.committed.get(tp, 0) for tp in plan[id(m)]}
            await m._set_assignment(plan[id(m)], positions)


class MemoryConsumer(Consumer):
    def __init__(
        self,
        broker: MemoryBroker,
        topics: list[str],
        group_id: str | None,
        listener: RebalanceListener | None,
        from_end: bool,
    ) -> None:
        self.broker = broker
        self.topics = list(topics)
        self.group_id = group_id
        self.listener = listener
        self.from_end = from_end
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._position: dict[TP, int] = {}
        self._started = False

    async def start(self) -> None:
        for t in self.topics:
            if t not in self.broker.topics:
                raise KeyError(f"topic {t!r} does not exist on memory://{self.broker.name}")
        self._started = True
        if self.group_id is None:
            tps = {TP(t, p) for t in self.topics for p in range(len(self.broker.topics[t]))}
            pos = {tp: self.broker.end_offset(tp) if self.from_end else 0 for tp in tps}
            await self._set_assignment(tps, pos)
        else:
            await self.broker.join(self.group_id, self)

    async def stop(self) -> None:
        if self._started and self.group_id is not None:
            await self.broker.leave(self.group_id, self)
        self._started = False

    async def _set_assignment(self, tps: set[TP], positions: dict[TP, int] | None = None) -> None:
        if self._assigned and self.listener is not None and self.group_id is not None:
            await self.listener.on_revoked(set(self._assigned))
        self._assigned = set(tps)
        self._paused &= self._assigned
        self._position = dict(positions or {})
        if tps and self.listener is not None and self.group_id is not None:
            await self.listener.on_assigned(set(tps))

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    def pause(self, tps: set[TP]) -> None:
        self._paused |= tps & self._assigned

    def resume(self, tps: set[TP]) -> None:
        self._paused -= tps

    def _take(self, max_records: int) -> dict[TP, list[Record]]:
        out: dict[TP, list[Record]] = {}
        left = max_records
        for tp in sorted(self._assigned - self._paused):
            if left <= 0:
                break
            log = self.broker.topics[tp.topic][tp.partition]
            pos = self._position.get(tp, 0)
            if pos < len(log):
                recs = log[pos:pos + left]
                out[tp] = recs
                self._position[tp] = pos + len(recs)
                left -= len(recs)
        return out

    def seek(self, tp: TP, offset: int) -> None:
        if tp in self._assigned:
            self._position[tp] = offset

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TP, list[Record]]:
        got = self._take(max_records)
        if got or timeout_ms <= 0:
            return got
        await self.broker.wait(timeout_ms / 1000)
        return self._take(max_records)

    async def commit(self, offsets: dict[TP, int]) -> None:
        if self.group_id is None:
            raise RuntimeError("commit needs a consumer group")
        group = self.broker.groups[self.group_id]
        for tp, off in offsets.items():
            if tp not in self._assigned:
                raise CommitFailed(f"cannot commit {tp}: not assigned to this member")
            group.committed[tp] = off

    async def read_to_end(self, tps: set[TP] | None = None) -> list[Record]:
        out: list[Record] = []
        for tp in sorted(self._assigned if tps is None else tps & self._assigned):
            log = self.broker.topics[tp.topic][tp.partition]
            out.extend(log[self._position.get(tp, 0):])
            self._position[tp] = len(log)
        return out

    async def committed(self, tp: TP) -> int | None:
        if self.group_id is None:
            return None
        return self.broker.groups[self.group_id].committed.get(tp)


class MemoryProducer(Producer):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def send(self, msg: Outgoing) -> asyncio.Future[None]:
        return await self.send_many([msg])

    async def send_many(self, msgs: list[Outgoing]) -> asyncio.Future[None]:
        for msg in msgs:
            self.broker.append(msg)
        await self.broker.notify()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class MemoryTransport(Transport):
    def __init__(self, url: str) -> None:
        self.url = url
        self.broker = MemoryBroker.get(url.removeprefix("memory://") or "default")

    def consumer(
        self,
        topics: list[str],
        group_id: str | None,
        *,
        listener: RebalanceListener | None = None,
        from_end: bool = False,
        read_committed: bool = False,
    ) -> Consumer:
        return MemoryConsumer(self.broker, topics, group_id, listener, from_end)

    def producer(self, transactional_id: str | None = None) -> Producer:
        if transactional_id is not None:
            raise NotImplementedError(
                "the in-process broker has no transactions: exactly-once delivery needs Kafka")
        return MemoryProducer(self.broker)

    async def create_topics(
        self, names: list[str], partitions: int, replication: int = 1
    ) -> list[str]:
        return [n for n in names if self.broker.create(n, partitions)]

    async def delete_topics(self, names: list[str]) -> None:
        for name in names:
            self.broker.topics.pop(name, None)

    async def partitions(self, topic: str) -> int:
        return len(self.broker.topics.get(topic, []))
