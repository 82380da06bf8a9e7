"""What a transport is: a consumer, a producer and topic administration.

Two implementations keep the same semantics (partitions, offsets, consumer groups,
commits): Kafka through aiokafka, and an in-process broker for tests and machines
without Java.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class CommitFailed(RuntimeError):
    """The group no longer lets this member commit (its partitions moved to another member)."""


class Fenced(RuntimeError):
    """A transactional producer was fenced: a newer producer took its transactional id (its
    input partition has another owner now) or the broker aborted its transaction after a
    stall. It can send and commit nothing more; what it held is the new owner's to redo."""


class TP(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)
class Record:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class Outgoing:
    """One message to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    partition: int | None = None


class RebalanceListener(Protocol):
    async def on_revoked(self, tps: set[TP]) -> None: ...
    async def on_assigned(self, tps: set[TP]) -> None: ...


class Consumer(ABC):
    """A consumer-group member (or, with ``group_id=None``, a plain reader of all partitions)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TP, list[Record]]: ...

    @abstractmethod
    def assignment(self) -> set[TP]: ...

    @abstractmethod
    def pause(self, tps: set[TP]) -> None: ...

    @abstractmethod
    def resume(self, tps: set[TP]) -> None: ...

    @abstractmethod
    def seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` from ``offset`` next."""

    @abstractmethod
    async def commit(self, offsets: dict[TP, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) for the group."""

    @abstractmethod
    async def committed(self, tp: TP) -> int | None: ...

    def rejoin(self) -> None:  # noqa: B027 - an optional hook: a no-op unless overridden
        """Rejoin the group soon (after a fenced producer): the group says again what this
        member owns, through the rebalance listener."""

    async def read_to_end(self, tps: set[TP] | None = None) -> list[Record]:
        """Every record of the assigned partitions (or ``tps``) up to their current end."""
        raise NotImplementedError


class Producer(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Flush what was sent, then close."""

    @abstractmethod
    async def send(self, msg: Outgoing) -> asyncio.Future[None]:
        """Hand ``msg`` to the producer; the returned future resolves when it is acknowledged.

        Awaiting ``send`` itself may block while the producer's buffer is full (backpressure).
        """

    async def send_many(self, msgs: list[Outgoing]) -> asyncio.Future[Any]:
        """Hand all of ``msgs`` to the producer in one go (one produce request carries
        them); the returned future resolves when every one is acknowledged."""
        acks = [await self.send(m) for m in msgs]
        return asyncio.gather(*acks)

    @abstractmethod
    async def flush(self) -> None: ...

    # Transactions (producers made with a transactional id): everything sent between
    # begin and commit becomes visible to read_committed consumers together with the
    # consumer offsets sent to the transaction, or not at all.
    async def begin_transaction(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no transactions")

    async def send_offsets_to_transaction(self, offsets: dict[TP, int], group_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no transactions")

    async def commit_transaction(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no transactions")

    async def abort_transaction(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no transactions")


class Transport(ABC):
    """A broker connection that makes consumers, producers and topics."""

    url: str

    @abstractmethod
    def consumer(
        self,
        topics: list[str],
        group_id: str | None,
        *,
        listener: RebalanceListener | None = None,
        from_end: bool = False,
        read_committed: bool = False,
    ) -> Consumer: ...

    @abstractmethod
    def producer(self, transactional_id: str | None = None) -> Producer:
        """A producer; with ``transactional_id``, a transactional one (exactly-once)."""

    @abstractmethod
    async def create_topics(
        self, names: list[str], partitions: int, replication: int = 1
    ) -> list[str]:
        """Create the missing topics; return those created (existing ones are left alone)."""

    @abstractmethod
    async def delete_topics(self, names: list[str]) -> None:
        """Delete ``names``; missing ones are ignored (a client's short-lived reply topic)."""

    @abstractmethod
    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (0 when it does not exist)."""

    async def close(self) -> None:
        return None
