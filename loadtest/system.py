"""What a replay drives: a system that takes requests and answers them, seen from the client.

The replayer only needs ``send`` (hand one request over, now) and a stream of answers, so
the measurement can be tested against a fake system with a known delay and the same code
measures the real pipeline through a transport (Kafka or the in-process broker).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from loadtest.traffic import Traffic, request_id
from pipeline import headers as H
from pipeline.transport.base import Outgoing, Producer, Transport
from schemas.messages import ScoreRequest, ScoreResult, schema_name
from workers.client import ResultWaiter


class Answer(NamedTuple):
    """One request's answer as the client saw it."""

    request: int  # which scheduled request (its index in the schedule)
    status: str  # ok, partial, expired, rejected, or error (the send failed)
    received_s: float  # time.monotonic() when the client read it
    headers: Mapping[str, bytes]  # the result's headers (stage timestamps)
    n_scored: int = 0


AnswerSink = Callable[[Answer], None]


class System(Protocol):
    """Something requests are sent to and answers come back from."""

    async def start(self, sink: AnswerSink) -> None:
        """Get ready; from now on every answer is passed to ``sink``."""

    async def send(self, index: int, entry: int, intended_s: float,
                   deadline_ms: int | None) -> None:
        """Send scheduled request ``index`` (traffic entry ``entry``, meant to be sent at
        ``intended_s`` on the monotonic clock) now. It may wait for room (a full producer
        buffer); the replayer measures from the intended time anyway."""

    async def stop(self) -> None:
        """Stop reading answers and release what ``start`` took."""


REQUEST_SCHEMA = schema_name(ScoreRequest.TYPE).encode()


class TransportSystem:
    """The pipeline behind a transport: requests go to the requests topic, answers are read
    from the results topic by their run-unique request id."""

    def __init__(self, transport: Transport, traffic: Traffic, *, requests_topic: str,
                 results_topic: str, tag: str) -> None:
        self.transport = transport
        self.traffic = traffic
        self.requests_topic = requests_topic
        self.results_topic = results_topic
        self.tag = tag
        self.send_errors: list[str] = []
        self._waiter = ResultWaiter(transport, results_topic)
        self._producer: Producer | None = None
        self._sink: AnswerSink | None = None

    async def start(self, sink: AnswerSink) -> None:
        self._sink = sink
        await self._waiter.__aenter__()
        self._producer = self.transport.producer()
        await self._producer.start()

    async def send(self, index: int, entry: int, intended_s: float,
                   deadline_ms: int | None) -> None:
        assert self._producer is not None
        rid = request_id(self.tag, index)
        rid_b = rid.encode()
        tr = self.traffic
        headers = {H.SCHEMA: REQUEST_SCHEMA, H.SENT_MS: str(H.now_ms()).encode(),
                   H.TRACE_ID: rid_b}
        if deadline_ms is not None:
            headers[H.DEADLINE_MS] = str(deadline_ms).encode()
        self._waiter.expect(rid).add_done_callback(
            functools.partial(self._answered, index, rid))
        try:
            ack = await self._producer.send(Outgoing(
                self.requests_topic, tr.heads[entry] + rid_b + tr.tails[entry],
                key=tr.keys[entry], headers=headers))
        except Exception as e:  # noqa: BLE001 - the request failed; the run goes on
            self._failed(index, e)
            return
        ack.add_done_callback(functools.partial(self._acked, index))

    def _acked(self, index: int, ack: asyncio.Future[None]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            self._failed(index, ack.exception())

    def _failed(self, index: int, error: BaseException | None) -> None:
        if len(self.send_errors) < 20:
            self.send_errors.append(f"request {index}: {error}")
        assert self._sink is not None
        self._sink(Answer(index, "error", time.monotonic(), {}))

    def _answered(self, index: int, rid: str, fut: asyncio.Future[ScoreResult]) -> None:
        if fut.cancelled():
            return
        res = fut.result()
        received = self._waiter.received_at.pop(rid, time.monotonic())
        headers = self._waiter.headers.pop(rid, {})
        assert self._sink is not None
        self._sink(Answer(index, res.status, received, headers, res.n_scored))

    async def stop(self) -> None:
        try:
            if self._producer is not None:
                await self._producer.stop()
        finally:
            await self._waiter.__aexit__(None, None, None)
