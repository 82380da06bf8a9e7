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

    __slots__ = ("_abandoned", "_done", "_next", "_pending", "committed")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._abandoned: set[int] = set()  # never done here: they hold the watermark back
        self._next: int | None = None  # one past the highest offset fetched
        self.committed: int | None = None

    def start(self, offset: int) -> None:
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} fetched again below {self._next}")
        self._pending.append(offset)
        self._next = offset + 1

    def start_many(self, offsets: list[int]) -> None:
        """``offsets`` (ascending) were fetched."""
        if offsets and self._next is not None and offsets[0] < self._next:
            raise ValueError(f"offset {offsets[0]} fetched again below {self._next}")
        self._pending.extend(offsets)
        if offsets:
            self._next = offsets[-1] + 1

    def done(self, offset: int) -> None:
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def done_many(self, offsets: list[int]) -> None:
        pending = self._pending
        if offsets and pending and pending[0] == offsets[0] and not self._done:
            # the common case: the oldest fetched records are the ones finished
            i = 0
            n = len(offsets)
            while i < n and pending and pending[0] == offsets[i]:
                pending.popleft()
                i += 1
            offsets = offsets[i:]
        for off in offsets:
            self.done(off)

    def abandon(self, offset: int) -> None:
        """``offset`` will not be finished here (its partition's next owner redoes it)."""
        self._abandoned.add(offset)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def unsettled(self) -> int:
        """Records neither done nor abandoned (what a drain or a revoke waits for)."""
        return len(self._pending) - len(self._done) - len(self._abandoned)

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

    def start_many(self, tp: TP, offsets: list[int]) -> None:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionOffsets()
        part.start_many(offsets)

    def done(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # a revoked partition's late completions are ignored
            part.done(offset)

    def done_many(self, tp: TP, offsets: list[int]) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.done_many(offsets)

    def abandon(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.abandon(offset)

    def in_flight(self, tps: set[TP] | None = None) -> int:
        return sum(p.in_flight for tp, p in self._parts.items() if tps is None or tp in tps)

    def unsettled(self, tps: set[TP] | None = None) -> int:
        return sum(p.unsettled for tp, p in self._parts.items() if tps is None or tp in tps)

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
