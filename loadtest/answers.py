"""Reading a replay's answers: results peeked, not decoded, and matched by their request id.

A replayed request's id is ``<run tag>-<11-digit index>`` (:func:`loadtest.traffic.request_id`),
so the scheduled request an answer belongs to is parsed from the id itself: no table of
awaited ids, no future per request. Only ``request_id``, ``status`` and ``n_scored`` are
read from a result (:func:`schemas.result_peek.peek_result`); its columns are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import structlog

from loadtest.traffic import ID_LEN
from pipeline.headers import CONTENT_TYPE
from pipeline.transport.base import Consumer, Record, Transport
from schemas.errors import SchemaError
from schemas.messages import ScoreResult, decode
from schemas.result_peek import peek_result

log = structlog.get_logger("adstream.loadtest")



class Answer(NamedTuple):
    """One request's answer as the client saw it."""

    request: int  # which scheduled request (its index in the schedule)
    status: str  # ok, partial, expired, rejected, or error (the send failed)
    received_s: float  # time.monotonic() when the client read it
    headers: Mapping[str, bytes]  # the result's headers (stage timestamps)
    n_scored: int = 0


AnswerSink = Callable[[Answer], None]


class AnswerReader:
    """Reads ``topic`` from its end and passes each answer to one of this run's requests
    (tag ``tag``, index below ``limit()``) to ``sink``; counts the others."""

    def __init__(self, transport: Transport, topic: str, tag: str,
                 limit: Callable[[], int], sink: AnswerSink) -> None:
        self.transport = transport
        self.topic = topic
        self.prefix = f"{tag}-"
        self.limit = limit
        self.sink = sink
        self.unexpected = 0  # answers to other runs' requests (or not for any sent one)
        self.unreadable = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = self.transport.consumer([self.topic], None, from_end=True)
        await consumer.start()
        self._task = asyncio.create_task(self._read(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self, consumer: Consumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(100, 10_000)
                now = time.monotonic()
                for records in batch.values():
                    for rec in records:
                        self._take(rec, now)
        finally:
            await consumer.stop()

    def _take(self, rec: Record, now: float) -> None:
        peek = peek_result(rec.value, content_type=rec.headers.get(CONTENT_TYPE))
        if peek is None:
            self._unreadable(rec)
            return
        rid = peek.request_id
        prefix = self.prefix
        if len(rid) != ID_LEN or not rid.startswith(prefix):
            self.unexpected += 1
            return
        try:
            index = int(rid[len(prefix):])
        except ValueError:
            self.unexpected += 1
            return
        if not 0 <= index < self.limit():
            self.unexpected += 1
            return
        self.sink(Answer(index, peek.status, now, rec.headers, peek.n_scored))

    def _unreadable(self, rec: Record) -> None:
        self.unreadable += 1
        try:
            decode(rec.value, ScoreResult, content_type=rec.headers.get(CONTENT_TYPE))
            reason = "the result's envelope is not right"
        except SchemaError as e:
            reason = str(e)
        log.warning("unreadable result", where=rec.where(), reason=reason)
