"""Request ids seen recently, and where each first came from: a reused id versus a redelivery.

A request's *origin* is the position of its ScoreRequest record (``ads.requests[3]@17``).
The feature actor stamps it into the ``origin`` header, every stage carries it, so the
aggregator can tell two cases apart that both show up as "this request id again":

- the same origin again (a redelivered request or chunk after a crash or rebalance): a
  duplicate, dropped silently as before;
- a different origin (a client sent a second request with an id already in use): the
  second request is answered ``rejected`` with :meth:`RequestIds.reason`, once.

The memory is bounded: the ``capacity`` most recently seen ids (the dedupe window). An
entry is kept small (~250 bytes: the id, its origin with slots and a shared topic name),
because under overload the window fills in a minute and is most of the aggregator's memory.
"""

from __future__ import annotations

import enum
import sys
from collections import OrderedDict
from dataclasses import dataclass

from pipeline.headers import ORIGIN
from pipeline.transport.base import Record

# a reused id rarely comes back more than a few times; bound what one id may hold
_MAX_REJECTED_PER_ID = 16


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request's record was read: topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: Record) -> Origin:
        return cls(sys.intern(record.topic), record.partition, record.offset)

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Origin | None:
        """``b"ads.requests[3]@17"`` -> Origin; None when absent or not in that form."""
        if raw is None:
            return None
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        head, at, offset = text.rpartition("@")
        topic, bracket, part = head.rpartition("[")
        if not (at and bracket and topic and part.endswith("]")):
            return None
        try:
            return cls(sys.intern(topic), int(part[:-1]), int(offset))
        except ValueError:
            return None

    @classmethod
    def from_headers(cls, headers: dict[str, bytes]) -> Origin | None:
        return cls.parse(headers.get(ORIGIN))

    def header(self) -> bytes:
        return str(self).encode()

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Seen(enum.Enum):
    NEW = "new"  # first time this id is seen: process it
    REPEAT = "repeat"  # same origin as before (redelivery): drop silently
    REUSED = "reused"  # another request with this id: answer it `rejected`
    REUSED_REPEAT = "reused_repeat"  # that other request again: already rejected, drop


class RequestIds:
    """Request id -> the origin of the first record seen with it, for the last ``capacity``
    ids. An id without an origin (chunks from a stage that does not stamp it) can only be
    recognized as a repeat, never as reused."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[str, Origin | None] = OrderedDict()  # id -> its first origin
        self._rejected: dict[str, list[Origin]] = {}  # the few reused ids: whom we rejected

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def check(self, request_id: str, origin: Origin | None) -> Seen:
        """Classify a record of ``request_id`` read from ``origin`` and remember it."""
        if request_id not in self._ids:
            self.remember(request_id, origin)
            return Seen.NEW
        first = self._ids[request_id]
        self._ids.move_to_end(request_id)  # a request still being answered stays in the window
        if origin is None or first is None or origin == first:
            return Seen.REPEAT
        rejected = self._rejected.setdefault(request_id, [])
        if origin in rejected:
            return Seen.REUSED_REPEAT
        rejected.append(origin)
        del rejected[:-_MAX_REJECTED_PER_ID]
        return Seen.REUSED

    def remember(self, request_id: str, origin: Origin | None) -> None:
        """Record ``request_id`` as first seen at ``origin`` (e.g. restored from a changelog)."""
        if request_id in self._ids:
            self._ids.move_to_end(request_id)
            return
        self._ids[request_id] = origin
        while len(self._ids) > self.capacity:
            old, _ = self._ids.popitem(last=False)
            self._rejected.pop(old, None)

    def first(self, request_id: str) -> Origin | None:
        return self._ids.get(request_id)

    def reason(self, request_id: str, origin: Origin | None) -> str:
        """The ``rejected`` reason for a reused id: which request used it first."""
        first = self.first(request_id)
        where = f" by the request at {first}" if first is not None else ""
        this = f" (this request: {origin})" if origin is not None else ""
        return (f"request_id: {request_id!r} is already in use{where}{this}; "
                "every request needs a new request id")
