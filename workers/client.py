"""The client side: produce ScoreRequests and wait for their ScoreResults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Self

import structlog

from adstream_client.wire import request_message
from pipeline.headers import CONTENT_TYPE
from pipeline.transport.base import Producer, Transport
from schemas.errors import SchemaError
from schemas.messages import ScoreRequest, ScoreResult, decode

log = structlog.get_logger("adstream.client")
__all__ = ["ResultWaiter", "request_message", "send_requests"]


class ResultWaiter:
    """Reads a results topic from its end and resolves one future per awaited request id."""

    def __init__(self, transport: Transport, topic: str, read_committed: bool = False) -> None:
        self.transport = transport
        self.topic = topic
        self.read_committed = read_committed
        self._futures: dict[str, asyncio.Future[ScoreResult]] = {}
        self._task: asyncio.Task[None] | None = None
        self.received_at: dict[str, float] = {}
        self.headers: dict[str, dict[str, bytes]] = {}  # stage timestamps and the like
        self.unexpected = 0

    async def __aenter__(self) -> Self:
        consumer = self.transport.consumer([self.topic], None, from_end=True,
                                           read_committed=self.read_committed)
        await consumer.start()
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, request_id: str) -> asyncio.Future[ScoreResult]:
        fut = self._futures.get(request_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._futures[request_id] = fut
        return fut

    async def _read(self, consumer: object) -> None:
        from pipeline.transport.base import Consumer

        assert isinstance(consumer, Consumer)
        try:
            while True:
                batch = await consumer.getmany(100, 10_000)
                now = time.monotonic()
                for records in batch.values():
                    for rec in records:
                        try:
                            res = decode(rec.value, ScoreResult, content_type=rec.headers.get(CONTENT_TYPE))
                        except SchemaError as e:
                            log.warning("unreadable result", where=rec.where(), reason=str(e))
                            continue
                        fut = self._futures.get(res.request_id)
                        if fut is None or fut.done():
                            self.unexpected += 1
                            continue
                        self.received_at[res.request_id] = now
                        self.headers[res.request_id] = rec.headers
                        fut.set_result(res)
        finally:
            await consumer.stop()


async def send_requests(
    producer: Producer, requests: list[ScoreRequest], topic: str, rate: float | None = None
) -> dict[str, float]:
    """Produce ``requests`` (at ``rate`` per second, open loop, or all at once); wait until
    Kafka acknowledged all; return each one's intended send time (monotonic)."""
    sent: dict[str, float] = {}
    acks = []
    start = time.monotonic()
    for i, req in enumerate(requests):
        at = start + i / rate if rate else time.monotonic()
        if rate and at > time.monotonic():
            await asyncio.sleep(at - time.monotonic())
        sent[req.request_id] = at
        acks.append(await producer.send(request_message(req, topic)))
    await asyncio.gather(*acks)
    return sent
