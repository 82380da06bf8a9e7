"""Consumer groups and their lag, read from the broker as Kafka's own tooling reads them.

A partition's lag is its log end offset minus the group's committed offset, which is what
``kafka-consumer-groups --describe`` prints. A partition the group never committed counts
from the log start, where a new member begins (``auto_offset_reset=earliest``). Workers
export the lag of the partitions they own (``pipeline.metrics``); ``adstream status``
shows every partition of every group.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.transport.base import TP, Transport

if TYPE_CHECKING:
    from pipeline.kafka_clients import KafkaOptions


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group has no committed offset for this partition
    end: int  # log end offset (the high watermark)
    lag: int

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[TP, ...]


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str  # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: tuple[Member, ...]

    def owner(self, tp: TP) -> Member | None:
        return next((m for m in self.members if tp in m.partitions), None)


class LagReader(ABC):
    """Reads consumer groups, committed offsets and log end offsets from a broker."""

    @abstractmethod
    async def groups(self, prefix: str = "") -> list[str]:
        """Names of the consumer groups that start with ``prefix``, sorted."""

    @abstractmethod
    async def describe(self, group: str) -> GroupInfo: ...

    @abstractmethod
    async def lag(self, group: str, tps: Iterable[TP] | None = None) -> list[PartitionLag]:
        """Lag of ``tps`` (default: every partition of the topics the group reads or
        committed), sorted by topic and partition."""

    async def close(self) -> None:
        return None


def lag_reader(transport: Transport, request_timeout_ms: int = 10_000) -> LagReader:
    """The reader for ``transport``'s broker (Kafka or the in-process one)."""
    from pipeline.transport.memory import MemoryTransport

    if isinstance(transport, MemoryTransport):
        return MemoryLagReader(transport)
    from pipeline.transport.kafka import KafkaTransport

    if isinstance(transport, KafkaTransport):
        return KafkaLagReader(transport.bootstrap, transport.opts, request_timeout_ms)
    raise TypeError(f"no lag reader for {type(transport).__name__}")


def error_text(e: BaseException) -> str:
    """``Type: message`` once (aiokafka's messages already start with their type)."""
    text = str(e)
    return text if text.startswith(type(e).__name__) else f"{type(e).__name__}: {text}"


def _lag(tp: TP, committed: int | None, begin: int, end: int) -> PartitionLag:
    start = begin if committed is None else committed
    return PartitionLag(tp.topic, tp.partition, committed, end, max(0, end - start))


class KafkaLagReader(LagReader):
    """aiokafka's admin client for groups and commits, a group-less consumer for offsets.

    The clients are opened on first use and kept, so a worker polling every few seconds
    does not reconnect each time.
    """

    def __init__(self, bootstrap: str, opts: KafkaOptions | None = None,
                 request_timeout_ms: int = 10_000) -> None:
        from pipeline.kafka_clients import KafkaOptions

        self.bootstrap = bootstrap
        base = opts or KafkaOptions()
        self.opts = dataclasses.replace(base, request_timeout_ms=request_timeout_ms)
        self.client_id = f"{base.client_id}-lag"
        self._admin: Any = None
        self._consumer: Any = None

    async def _clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer

        from pipeline.kafka_clients import consumer_kwargs
        from pipeline.kafka_reach import started
        from pipeline.transport.kafka import KafkaTransport

        if self._admin is None:  # the transport's admin client, with this reader's options
            self._admin = await KafkaTransport(self.bootstrap, self.opts).admin(
                self.client_id, "lag reader")
        if self._consumer is None:
            self._consumer = await started(
                lambda: AIOKafkaConsumer(**consumer_kwargs(
                    self.bootstrap, self.opts, self.client_id, group_id=None,
                    enable_auto_commit=False)),
                self.bootstrap, self.opts, "lag reader")
        return self._admin, self._consumer

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def groups(self, prefix: str = "") -> list[str]:
        admin, _ = await self._clients()
        # list_consumer_groups gives (name, protocol type, ...) tuples: the name comes first
        names = (str(name) for name, *_ in await admin.list_consumer_groups())
        return sorted(n for n in names if n.startswith(prefix))

    async def describe(self, group: str) -> GroupInfo:
        from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

        admin, _ = await self._clients()
        (response,) = await admin.describe_consumer_groups([group])
        (g,) = response.to_object()["groups"]  # fields by name, whatever the protocol version
        members = []
        for m in g["members"]:
            tps: tuple[TP, ...] = ()
            if m["member_assignment"]:
                assignment = ConsumerProtocolMemberAssignment.decode(m["member_assignment"])
                tps = tuple(sorted(TP(t, p) for t, ps in assignment.assignment for p in ps))
            members.append(Member(str(m["member_id"]), str(m["client_id"]),
                                  str(m["client_host"]).lstrip("/"), tps))
        return GroupInfo(group, str(g["state"]),
                         tuple(sorted(members, key=lambda m: m.partitions)))

    async def lag(self, group: str, tps: Iterable[TP] | None = None) -> list[PartitionLag]:
        from aiokafka.structs import TopicPartition

        admin, consumer = await self._clients()
        committed = {TP(tp.topic, tp.partition): int(meta.offset) for tp, meta in
                     (await admin.list_consumer_group_offsets(group)).items()
                     if meta.offset >= 0}
        if tps is None:
            info = await self.describe(group)
            topics = {tp.topic for tp in committed} | {
                tp.topic for m in info.members for tp in m.partitions}
            wanted = set(committed) | {TP(t, p) for t in topics
                                       for p in await self._partitions(t)}
        else:
            wanted = set(tps)
        if not wanted:
            return []
        ktps = [TopicPartition(*tp) for tp in sorted(wanted)]
        ends = await consumer.end_offsets(ktps)
        missing = [tp for tp in ktps if TP(*tp) not in committed]
        begins = await consumer.beginning_offsets(missing) if missing else {}
        return [_lag(TP(*tp), committed.get(TP(*tp)), int(begins.get(tp, 0)), int(ends[tp]))
                for tp in ktps]

    async def _partitions(self, topic: str) -> list[int]:
        admin, _ = await self._clients()
        for t in await admin.describe_topics([topic]):
            if t.get("topic") == topic and not t.get("error_code"):
                return sorted(int(p["partition"]) for p in t.get("partitions", []))
        return []


class MemoryLagReader(LagReader):
    """The in-process broker's groups (for unit tests and ``memory://`` runs)."""

    def __init__(self, transport: Transport) -> None:
        from pipeline.transport.memory import MemoryTransport

        assert isinstance(transport, MemoryTransport)
        self.broker = transport.broker

    async def groups(self, prefix: str = "") -> list[str]:
        return sorted(g for g in self.broker.groups if g.startswith(prefix))

    async def describe(self, group: str) -> GroupInfo:
        g = self.broker.groups.get(group)
        if g is None:
            return GroupInfo(group, "Dead", ())
        members = tuple(Member(f"member-{i}", "in-process", "in-process",
                               tuple(sorted(m.assignment())))
                        for i, m in enumerate(g.members))
        return GroupInfo(group, "Stable" if members else "Empty", members)

    async def lag(self, group: str, tps: Iterable[TP] | None = None) -> list[PartitionLag]:
        g = self.broker.groups.get(group)
        committed = dict(g.committed) if g is not None else {}
        if tps is None:
            topics = {tp.topic for tp in committed}
            if g is not None:
                topics |= {t for m in g.members for t in m.topics}
            tps = {TP(t, p) for t in topics for p in range(len(self.broker.topics.get(t, [])))}
        return [_lag(tp, committed.get(tp), 0, self.broker.end_offset(tp)) for tp in sorted(tps)]
