"""What a replay drives: a system that takes requests and answers them, seen from the client.

The replayer only needs ``send`` (hand one request over, now) and a stream of answers, so
the measurement can be tested against a fake system with a known delay and the same code
measures the real pipeline through a transport (Kafka or the in-process broker).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from loadtest.answers import Answer, AnswerReader, AnswerSink
from loadtest.traffic import Traffic
from pipeline.headers import DEADLINE_MS, SCHEMA, SENT_MS, TRACE_ID, now_ms
from pipeline.transport.base import Outgoing, Producer, Transport
from schemas.messages import ScoreRequest, schema_name

__all__ = ["Answer", "AnswerSink", "System", "TransportSystem"]


class System(Protocol):
    """Something requests are sent to and answers come back from."""

    async def start(self, sink: AnswerSink) -> None:
        """Get ready; from now on every answer is passed to ``sink``."""

    async def send(self, first: int, entries: Sequence[int], intended_s: Sequence[float],
                   deadlines_ms: Sequence[int | None]) -> None:
        """Send scheduled requests ``first``, ``first + 1``, … (traffic entries
        ``entries``, meant to be sent at ``intended_s`` on the monotonic clock) now, in one
        go. It may wait for room (a full producer buffer); the replayer measures from the
        intended times anyway."""

    async def stop(self) -> None:
        """Stop reading answers and release what ``start`` took."""


REQUEST_SCHEMA = schema_name(ScoreRequest.TYPE).encode()
Ack = asyncio.Future[None] | BaseException  # a send's acknowledgement, or why it failed
MAX_SEND_ERRORS = 20  # the first failures kept with their reason


class TransportSystem:
    """The pipeline behind a transport: requests go to the requests topic, answers are read
    from the results topic and matched to their request by its run-unique id.

    A burst of due requests is handed to the producer without yielding, so one produce
    request carries them all; their acknowledgements are checked at the next burst (and at
    stop), not by a callback per request. A failed send is answered ``error``.
    """

    def __init__(self, transport: Transport, traffic: Traffic, *, requests_topic: str,
                 results_topic: str, tag: str) -> None:
        self.transport = transport
        self.traffic = traffic
        self.requests_topic = requests_topic
        self.results_topic = results_topic
        self.tag = tag
        self.send_errors: list[str] = []
        self.n_failed = 0
        self._prefix = f"{tag}-".encode()
        self._n_sent = 0
        self._unacked: deque[tuple[int, list[Ack]]] = deque()  # (first index, one per request)
        self._reader: AnswerReader | None = None
        self._producer: Producer | None = None
        self._sink: AnswerSink | None = None

    @property
    def unexpected(self) -> int:
        """Answers read that were not for a request this run sent."""
        return 0 if self._reader is None else self._reader.unexpected

    async def start(self, sink: AnswerSink) -> None:
        self._sink = sink
        self._reader = AnswerReader(self.transport, self.results_topic, self.tag,
                                    lambda: self._n_sent, sink)
        await self._reader.start()
        self._producer = self.transport.producer()
        await self._producer.start()

    async def send(self, first: int, entries: Sequence[int], intended_s: Sequence[float],
                   deadlines_ms: Sequence[int | None]) -> None:
        producer = self._producer
        assert producer is not None
        self._reap()
        tr = self.traffic
        heads, tails, keys, topic = tr.heads, tr.tails, tr.keys, self.requests_topic
        prefix = self._prefix
        sent = b"%d" % now_ms()
        acks: list[Ack] = []
        self._n_sent = first + len(entries)
        for k, (entry, deadline) in enumerate(zip(entries, deadlines_ms, strict=True)):
            rid = b"%s%011d" % (prefix, first + k)
            headers = {SCHEMA: REQUEST_SCHEMA, SENT_MS: sent, TRACE_ID: rid}
            if deadline is not None:
                headers[DEADLINE_MS] = b"%d" % deadline
            try:
                acks.append(await producer.send(Outgoing(
                    topic, heads[entry] + rid + tails[entry], key=keys[entry],
                    headers=headers)))
            except Exception as e:  # the request failed; the run goes on
                acks.append(e)
        self._unacked.append((first, acks))

    def _reap(self, *, everything: bool = False) -> None:
        """Answer ``error`` for each request of the acknowledged bursts whose send failed."""
        while self._unacked:
            first, acks = self._unacked[0]
            if not everything and not all(isinstance(a, BaseException) or a.done()
                                          for a in acks):
                return
            self._unacked.popleft()
            for k, a in enumerate(acks):
                error = _error(a)
                if error is not None:
                    self._failed(first + k, error)

    def _failed(self, index: int, error: BaseException) -> None:
        self.n_failed += 1
        if len(self.send_errors) < MAX_SEND_ERRORS:
            self.send_errors.append(f"request {index}: {error}")
        assert self._sink is not None
        self._sink(Answer(index, "error", time.monotonic(), {}))

    async def stop(self) -> None:
        try:
            if self._producer is not None:
                await self._producer.stop()  # flushes: every send is acknowledged or failed
            self._reap(everything=True)
        finally:
            if self._reader is not None:
                await self._reader.stop()


def _error(ack: Ack) -> BaseException | None:
    """The failure of one send: its exception, or the exception its future ended with."""
    if isinstance(ack, BaseException):
        return ack
    if not ack.done():
        return RuntimeError("not acknowledged when the producer closed")
    if ack.cancelled():
        return RuntimeError("the send was cancelled")
    return ack.exception()
