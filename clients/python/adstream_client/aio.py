"""The asyncio client: send a ScoreRequest, get its ScoreResult back on this client's own topic.

Reply path: each client instance creates a one-partition reply topic when it opens, names
it in every request's ``reply_to`` and reads only that topic, so no caller reads the others'
answers; the topic is deleted when the client closes. (A shared results topic would make
every caller read every partition and filter; a partition of a shared topic would need the
pipeline to route by partition, which it does not: results are keyed by request id.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Self

from adstream_client.errors import (
    BrokerUnavailable,
    ClientClosed,
    ClientError,
    Rejected,
    ScoreTimeout,
)
from adstream_client.wire import request_message
from pipeline.headers import CONTENT_TYPE, now_ms
from pipeline.config import KafkaSection
from pipeline.kafka_clients import kafka_options
from pipeline.transport import Consumer, Producer, Transport, open_transport
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, ScoreResult, decode

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "ADSTREAM_KAFKA_BOOTSTRAP"
# the deadline sent is the timeout less this share of it (at most MAX_MARGIN_MS), so that a
# partial answer given at the deadline still reaches the caller before it stops waiting
MARGIN_SHARE = 0.1
MAX_MARGIN_MS = 200

Request = ScoreRequest | Mapping[str, Any]


def _broker_errors() -> tuple[type[BaseException], ...]:
    from aiokafka.errors import KafkaError

    from pipeline.kafka_reach import KafkaUnavailable

    return (KafkaError, OSError, KafkaUnavailable)


def reply_topic_name() -> str:
    """``adstream.reply.<host>.<pid>.<random>``: unique, and says whose it is."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:60] or "host"
    return f"adstream.reply.{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


class AsyncClient:
    """Score requests through a running adstream pipeline, from one event loop.

    ``async with AsyncClient("127.0.0.1:9092") as c: result = await c.score(req, timeout=2)``
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        requests_topic: str = "ads.requests",
        reply_topic: str | None = None,
        timeout: float = 10.0,
        kafka: KafkaSection | None = None,
        open_timeout: float = 30.0,
        linger_s: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
        self.requests_topic = requests_topic
        self.owns_reply_topic = reply_topic is None
        self.reply_topic = reply_topic or reply_topic_name()
        self.timeout = timeout
        self.open_timeout = open_timeout
        self.linger_s = linger_s  # after an unanswered request, before the topic goes
        self._kafka = kafka or KafkaSection()  # TLS/SASL and client settings, as adstream's
        self._transport: Transport | None = None
        self._producer: Producer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[ScoreResult]] = {}
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._late_ms = 0  # latest deadline of a request that ended unanswered
        self._failure: BaseException | None = None
        self._closed = False
        self.unexpected = 0  # answers nobody waits for (after a timeout, duplicates)

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, check the request topic, create the reply topic and start reading it."""
        if self._transport is not None:
            raise ClientError("this client is already open")
        if self._closed:
            raise ClientClosed("this client was closed; make a new one")
        transport = open_transport(self.bootstrap,
                                   kafka_options(self._kafka, wait_for_broker=False))
        try:
            async with asyncio.timeout(self.open_timeout):
                await self._start(transport)
        except TimeoutError:
            await self._abandon(transport)
            raise BrokerUnavailable(f"no Kafka broker answered at {self.bootstrap} within "
                                    f"{self.open_timeout:g}s") from None
        except _broker_errors() as e:
            await self._abandon(transport)
            raise BrokerUnavailable(f"cannot use Kafka at {self.bootstrap}: "
                                    f"{type(e).__name__}: {e}") from None
        except BaseException:
            await self._abandon(transport)
            raise

    async def _start(self, transport: Transport) -> None:
        if await transport.partitions(self.requests_topic) == 0:
            raise ClientError(f"topic {self.requests_topic!r} does not exist at "
                              f"{self.bootstrap}; run `adstream topics create`")
        if self.owns_reply_topic:
            await transport.create_topics([self.reply_topic], 1)
        elif await transport.partitions(self.reply_topic) == 0:
            raise ClientError(f"reply topic {self.reply_topic!r} does not exist at "
                              f"{self.bootstrap}")
        self._transport = transport
        consumer = transport.consumer([self.reply_topic], None, from_end=not
                                      self.owns_reply_topic)
        await consumer.start()
        producer = transport.producer()
        try:
            await producer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._producer = producer
        self._reader = asyncio.create_task(self._read(consumer), name="adstream-client-read")

    async def _abandon(self, transport: Transport) -> None:
        """Undo a failed open: nothing it made is left behind."""
        self._transport = None
        if self.owns_reply_topic:
            try:
                await transport.delete_topics([self.reply_topic])
            except _broker_errors():
                pass  # the broker is what failed; the topic may not exist
        await transport.close()

    async def close(self) -> None:
        """Wait for calls in flight, then stop reading and delete this client's reply topic.

        After a request that got no answer, wait until its deadline plus ``linger_s`` has
        passed first, so the pipeline's late ``expired``/``partial`` answer still finds the
        topic (a stage must never have to produce to a topic that no longer exists).
        """
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        late_s = (self._late_ms - now_ms()) / 1000 + self.linger_s if self._late_ms else 0
        if late_s > 0:
            await asyncio.sleep(late_s)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
            if not self._reader.cancelled():
                self._reader.exception()  # a failure was handed to the waiting calls already
        transport, self._transport = self._transport, None
        try:
            if self._producer is not None:
                await self._producer.stop()
            if transport is not None and self.owns_reply_topic:
                await transport.delete_topics([self.reply_topic])
        except _broker_errors() as e:
            raise BrokerUnavailable(f"closing the client at {self.bootstrap}: "
                                    f"{type(e).__name__}: {e}") from None
        finally:
            if transport is not None:
                await transport.close()

    # ---- scoring ---------------------------------------------------------------------------

    # ASYNC109: ``timeout`` also sets the request's deadline on the wire, which a caller's
    # asyncio.timeout() could not carry to the pipeline
    async def score(self, request: Request, timeout: float | None = None, *,  # noqa: ASYNC109
                    trace_id: str | None = None) -> ScoreResult:
        """The ranked top-K for ``request`` (a ScoreRequest, or a dict in the JSON-lines form).

        Status ``ok`` or ``partial`` returns the result; ``rejected`` raises :class:`Rejected`;
        no answer within ``timeout`` seconds, or ``expired``, raises :class:`ScoreTimeout`.
        The request's ``reply_to`` is this client's topic and its deadline follows from
        ``timeout`` (an earlier deadline already in the request is kept).
        """
        timeout = self.timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        start_ms = now_ms()
        req = self.prepare(request, timeout, start_ms)
        rid = req.request_id
        if self._closed or self._producer is None:
            raise ClientClosed("the client is not open: use `async with AsyncClient(...)` or "
                               "call open() first")
        if self._failure is not None:
            raise BrokerUnavailable(f"the client stopped reading answers: {self._failure}")
        if rid in self._waiting:
            raise ValueError(f"request id {rid!r} is already waiting for its answer on this "
                             "client; every request needs a new request id")
        fut: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._calls += 1
        self._idle.clear()
        try:
            async with asyncio.timeout(timeout):
                try:
                    ack = await self._producer.send(
                        request_message(req, self.requests_topic, trace_id))
                    await ack
                except _broker_errors() as e:
                    raise BrokerUnavailable(f"producing request {rid!r} to "
                                            f"{self.requests_topic} failed: "
                                            f"{type(e).__name__}: {e}") from None
                result = await fut
        except TimeoutError:
            self._late_ms = max(self._late_ms, req.deadline_ms or start_ms)
            raise ScoreTimeout(rid, f"no answer to request {rid!r} within {timeout:g}s; are "
                                    "all roles running? (`adstream status`)") from None
        finally:
            self._waiting.pop(rid, None)
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()
        return _outcome(result)

    async def score_many(self, requests: Iterable[Request],
                         timeout: float | None = None, *,  # noqa: ASYNC109 - as score()
                         return_exceptions: bool = False) -> list[Any]:
        """Score all ``requests`` concurrently; results in the same order. With
        ``return_exceptions``, a failed request's place holds its error instead of raising
        the first one."""
        return await asyncio.gather(*(self.score(r, timeout) for r in requests),
                                    return_exceptions=return_exceptions)

    def prepare(self, request: Request, timeout: float, at_ms: int) -> ScoreRequest:
        """The request as it is sent: reply_to this client, deadline from ``timeout``."""
        if isinstance(request, Mapping):
            req = request_from_json(dict(request), at_ms)  # validates; SchemaError names it
        elif isinstance(request, ScoreRequest):
            req = request
        else:
            raise TypeError(f"expected a ScoreRequest or a dict, got {type(request).__name__}")
        margin = min(MAX_MARGIN_MS, int(timeout * 1000 * MARGIN_SHARE))
        deadline = at_ms + int(timeout * 1000) - margin
        if req.deadline_ms is not None:
            deadline = min(deadline, req.deadline_ms)
        return dataclasses.replace(req, reply_to=self.reply_topic, deadline_ms=deadline)

    async def _read(self, consumer: Consumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(200, 1000)
                for records in batch.values():
                    for rec in records:
                        try:
                            res = decode(rec.value, ScoreResult, content_type=rec.headers.get(CONTENT_TYPE))
                        except SchemaError:
                            self.unexpected += 1
                            continue
                        fut = self._waiting.get(res.request_id)
                        if fut is None or fut.done():
                            self.unexpected += 1
                        else:
                            fut.set_result(res)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failure = e
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(BrokerUnavailable(
                        f"reading answers from {self.reply_topic} failed: "
                        f"{type(e).__name__}: {e}"))
            raise
        finally:
            await consumer.stop()


def _outcome(res: ScoreResult) -> ScoreResult:
    if res.status == "rejected":
        raise Rejected(res.request_id, res.reason or "no reason given")
    if res.status == "expired":
        raise ScoreTimeout(res.request_id, f"request {res.request_id!r} expired in the "
                                           f"pipeline: {res.reason or 'deadline passed'}")
    return res
