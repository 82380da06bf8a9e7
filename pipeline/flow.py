"""Backpressure: pause the consumer's partitions above a high in-flight mark, resume below a low one.

Kafka keeps the backlog; the process keeps at most ``high`` messages fetched but not done.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.transport.base import TP, Consumer


class FlowControl:
    def __init__(
        self,
        consumer: Consumer,
        high: int,
        low: int,
        on_pause: Callable[[set[TP]], None] | None = None,
        on_resume: Callable[[set[TP]], None] | None = None,
    ) -> None:
        if not 0 <= low < high:
            raise ValueError(f"flow control needs 0 <= low ({low}) < high ({high})")
        self.consumer = consumer
        self.high = high
        self.low = low
        self.in_flight = 0
        self.paused: set[TP] = set()
        self.pauses = 0
        self._on_pause = on_pause
        self._on_resume = on_resume

    def room(self) -> int:
        """How many more records may be fetched now."""
        return max(0, self.high - self.in_flight)

    def started(self, n: int = 1) -> None:
        self.in_flight += n
        if self.in_flight >= self.high and not self.paused:
            self.paused = self.consumer.assignment()
            self.consumer.pause(self.paused)
            self.pauses += 1
            if self._on_pause is not None:
                self._on_pause(self.paused)

    def finished(self, n: int = 1) -> None:
        self.in_flight -= n
        if self.paused and self.in_flight <= self.low:
            self.consumer.resume(self.paused)
            if self._on_resume is not None:
                self._on_resume(self.paused)
            self.paused = set()

    def reassigned(self) -> None:
        """After a rebalance the consumer forgets pauses; apply ours to the new assignment."""
        if self.paused:
            self.paused = self.consumer.assignment()
            self.consumer.pause(self.paused)
