"""Cooperative time slices: a handler working through a big batch yields to the event loop
every millisecond or so, so one batch never holds up the other tasks of the process (the
Kafka client's I/O, the other roles of ``adstream run``) for longer than that."""

from __future__ import annotations

import asyncio
import time

SLICE_S = 0.001


class TimeSlice:
    """``await slice.check()`` between records: yields once ``budget_s`` of work piled up."""

    __slots__ = ("_since", "budget_s")

    def __init__(self, budget_s: float = SLICE_S) -> None:
        self.budget_s = budget_s
        self._since = time.perf_counter()

    async def check(self) -> None:
        if time.perf_counter() - self._since >= self.budget_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
