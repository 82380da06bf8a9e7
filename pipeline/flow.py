"""Backpressure: pause the consumer's partitions above a high in-flight mark, resume below a low one.

Kafka keeps the backlog; the process keeps at most ``high`` messages (and ``high_bytes`` of
their values) fetched but not done, so its memory does not grow with the offered rate.
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
        *,
        high_bytes: int | None = None,
        low_bytes: int | None = None,
    ) -> None:
        if not 0 <= low < high:
            raise ValueError(f"flow control needs 0 <= low ({low}) < high ({high})")
        high_bytes = high_bytes if high_bytes is not None else 2**62
        low_bytes = low_bytes if low_bytes is not None else high_bytes // 2
        if not 0 <= low_bytes < high_bytes:
            raise ValueError(f"flow control needs 0 <= low_bytes ({low_bytes}) < high_bytes "
                             f"({high_bytes})")
        self.consumer = consumer
        self.high = high
        self.low = low
        self.high_bytes = high_bytes
        self.low_bytes = low_bytes
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.paused: set[TP] = set()
        self.pauses = 0
        self._on_pause = on_pause
        self._on_resume = on_resume

    def room(self) -> int:
        """How many more records may be fetched now."""
        if self.in_flight_bytes >= self.high_bytes:
            return 0
        return max(0, self.high - self.in_flight)

    def started(self, n: int = 1, n_bytes: int = 0) -> None:
        self.in_flight += n
        self.in_flight_bytes += n_bytes
        if (self.in_flight >= self.high or self.in_flight_bytes >= self.high_bytes) \
                and not self.paused:
            self.paused = self.consumer.assignment()
            self.consumer.pause(self.paused)
            self.pauses += 1
            if self._on_pause is not None:
                self._on_pause(self.paused)

    def finished(self, n: int = 1, n_bytes: int = 0) -> None:
        self.in_flight -= n
        self.in_flight_bytes -= n_bytes
        if self.paused and self.in_flight <= self.low and self.in_flight_bytes <= self.low_bytes:
            self.consumer.resume(self.paused)
            if self._on_resume is not None:
                self._on_resume(self.paused)
            self.paused = set()

    def reassigned(self) -> None:
        """After a rebalance the consumer forgets pauses; apply ours to the new assignment."""
        if self.paused:
            self.paused = self.consumer.assignment()
            self.consumer.pause(self.paused)
