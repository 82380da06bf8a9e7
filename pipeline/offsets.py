"""Which input offsets are done, and the watermark that may be committed.

Work inside a partition can finish out of order; the commit is the lowest offset not yet
done (Kafka's "next offset to read"), so a restart never skips an unfinished message.
Offsets need not be contiguous (transaction markers and compaction leave gaps).
"""

from __future__ import annotations

from collections import deque

from pipeline.transport.base import TP


class PartitionOffsets:
    """Started and done offsets of one partition, in the order they were fetched."""

    __slots__ = ("_done", "_next", "_pending", "committed")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # one past the highest offset fetched
        self.committed: int | None = None

    def start(self, offset: int) -> None:
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} fetched again below {self._next}")
        self._pending.append(offset)
        self._next = offset + 1

    def done(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            self._done.discard(self._pending.popleft())

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def watermark(self) -> int | None:
        """The offset to commit: the first unfinished one, or one past the last fetched."""
        if self._pending:
            return self._pending[0]
        return self._next


class OffsetTracker:
    """Per-partition watermarks for one consumer."""

    def __init__(self) -> None:
        self._parts: dict[TP, PartitionOffsets] = {}

    def start(self, tp: TP, offset: int) -> None:
        self._parts.setdefault(tp, PartitionOffsets()).start(offset)

    def done(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # a revoked partition's late completions are ignored
            part.done(offset)

    def in_flight(self, tps: set[TP] | None = None) -> int:
        return sum(p.in_flight for tp, p in self._parts.items() if tps is None or tp in tps)

    def to_commit(self, tps: set[TP] | None = None) -> dict[TP, int]:
        """Watermarks that moved since they were last marked committed."""
        out: dict[TP, int] = {}
        for tp, part in self._parts.items():
            if tps is not None and tp not in tps:
                continue
            wm = part.watermark()
            if wm is not None and wm != part.committed:
                out[tp] = wm
        return out

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        for tp, off in offsets.items():
            if tp in self._parts:
                self._parts[tp].committed = off

    def forget(self, tps: set[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)
