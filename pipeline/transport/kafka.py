"""The Kafka transport: aiokafka consumers and producers with safe defaults.

Clients take their arguments from ``pipeline.kafka_clients`` (security, pass-through
options) and start through ``pipeline.kafka_reach.started``: a worker started before its
broker waits for it (``kafka.connect_timeout_s``), and a broker that cannot be used is one
line naming it and the cause.

Producers use ``acks=all`` and idempotence, so what Kafka acknowledged is never lost or
reordered by retries; batches are large (1 MB) because the broker's CPU per request, not the
network, limits a small machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalOperation,
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidTxnState,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import TopicPartition

from pipeline.kafka_clients import (
    KafkaOptions,
    admin_kwargs,
    consumer_kwargs,
    member_suffix,
    producer_kwargs,
)
from pipeline.kafka_reach import LOG_EVERY_S, started
from pipeline.membership import group_instance_id
from pipeline.transport.base import (
    TP,
    CommitFailed,
    Consumer,
    Fenced,
    Outgoing,
    Producer,
    RebalanceListener,
    Record,
    Transport,
)

log = structlog.get_logger("adstream.kafka")


def _tp(tp: TopicPartition) -> TP:
    return TP(tp.topic, tp.partition)


# what a transactional producer raises once fenced: the broker's refusals, then (its
# transaction manager in a fatal state) "Not in the middle of a transaction" and the like
FENCED_ERRORS = (ProducerFenced, InvalidProducerEpoch, InvalidTxnState, IllegalOperation)


def fenced(error: BaseException, transactional_id: str) -> Fenced:
    """A fenced producer's ``error`` (one of :data:`FENCED_ERRORS`) as :class:`Fenced`."""
    reason = str(error) or type(error).__name__
    return Fenced(f"transactional producer {transactional_id} fenced ({reason})")


def _translated(fut: asyncio.Future[Any], transactional_id: str) -> asyncio.Future[Any]:
    """``fut`` with a fenced producer's error raised as :class:`Fenced`."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def copy(f: asyncio.Future[Any]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif (e := f.exception()) is not None:
            out.set_exception(fenced(e, transactional_id)
                              if isinstance(e, FENCED_ERRORS) else e)
        else:
            out.set_result(f.result())

    fut.add_done_callback(copy)
    return out


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, inner: RebalanceListener) -> None:
        self.inner = inner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self.inner.on_revoked({_tp(tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            await self.inner.on_assigned({_tp(tp) for tp in assigned})


class KafkaConsumer(Consumer):
    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str | None,
        listener: RebalanceListener | None,
        from_end: bool,
        opts: KafkaOptions,
        read_committed: bool = False,
    ) -> None:
        self.topics = topics
        self.group_id = group_id
        self.listener = listener
        self.from_end = from_end
        self.bootstrap = bootstrap
        self.opts = opts
        self._c: Any = None  # made by start(), once a broker answers
        self._kwargs = consumer_kwargs(
            bootstrap, opts,
            group_id=group_id,
            group_instance_id=self._instance_id(),
            enable_auto_commit=False,
            auto_offset_reset="latest" if from_end else "earliest",
            session_timeout_ms=opts.session_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            max_poll_interval_ms=opts.max_poll_interval_ms,
            fetch_max_bytes=opts.fetch_max_bytes,
            max_partition_fetch_bytes=opts.partition_fetch_bytes,
            isolation_level="read_committed" if read_committed else opts.isolation_level,
        )

    def _instance_id(self) -> str | None:
        return None if self.group_id is None else group_instance_id(self.group_id,
                                                                     member_suffix(self.opts))

    async def start(self) -> None:
        self._kwargs["group_instance_id"] = self._instance_id()  # a standby's, once it took over
        self._c = await started(lambda: AIOKafkaConsumer(**self._kwargs), self.bootstrap,
                                self.opts, "consumer")
        if self.group_id is None:
            tps: list[TopicPartition] = []
            for t in self.topics:
                parts = await self._partitions_of(t)
                tps.extend(TopicPartition(t, p) for p in parts)
            self._c.assign(tps)
            if self.from_end:
                await self._c.seek_to_end(*tps)
            else:
                await self._c.seek_to_beginning(*tps)
        else:
            await self._wait_for_topics()
            listener = _Listener(self.listener) if self.listener else None
            self._c.subscribe(self.topics, listener=listener)

    async def _wait_for_topics(self) -> None:
        """A member that subscribes before its topics exist would see them only at the next
        metadata refresh (minutes), so wait for them as for the broker: up to
        ``connect_timeout_s``, one line every few seconds; then subscribe anyway."""
        deadline = time.monotonic() + self.opts.connect_timeout_s
        next_log = time.monotonic() + LOG_EVERY_S
        while True:
            for t in self.topics:
                self._c._client.add_topic(t)
            await self._c._client.force_metadata_update()
            missing = [t for t in self.topics if not self._c.partitions_for_topic(t)]
            now = time.monotonic()
            if not missing:
                return
            if now >= deadline:
                if self.opts.connect_timeout_s > 0:
                    log.warning("topics missing; subscribing anyway", topics=missing,
                                bootstrap=self.bootstrap)
                return
            if now >= next_log:
                log.warning("waiting for topics", topics=missing, bootstrap=self.bootstrap,
                            gives_up_in_s=round(deadline - now))
                next_log = now + LOG_EVERY_S
            await asyncio.sleep(min(1.0, deadline - now))

    async def _partitions_of(self, topic: str) -> list[int]:
        for _ in range(50):
            parts = self._c.partitions_for_topic(topic)
            if parts:
                return sorted(parts)
            await self._c._client.force_metadata_update()
            self._c._client.add_topic(topic)
            await asyncio.sleep(0.1)
        raise KeyError(f"topic {topic!r} does not exist (or has no partitions)")

    async def stop(self) -> None:
        if self._c is not None:
            await self._c.stop()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TP, list[Record]]:
        batch = await self._c.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {
            _tp(tp): [
                Record(r.topic, r.partition, r.offset, r.key, r.value,
                       {k: bytes(v) for k, v in (r.headers or ())}, r.timestamp)
                for r in recs
            ]
            for tp, recs in batch.items()
        }

    def assignment(self) -> set[TP]:
        return set() if self._c is None else {_tp(tp) for tp in self._c.assignment()}

    def seek(self, tp: TP, offset: int) -> None:
        self._c.seek(TopicPartition(*tp), offset)

    def pause(self, tps: set[TP]) -> None:
        if tps:
            self._c.pause(*(TopicPartition(*tp) for tp in tps))

    def resume(self, tps: set[TP]) -> None:
        if tps:
            self._c.resume(*(TopicPartition(*tp) for tp in tps))

    async def commit(self, offsets: dict[TP, int]) -> None:
        if not offsets:
            return
        try:
            await self._c.commit({TopicPartition(*tp): off for tp, off in offsets.items()})
        except (CommitFailedError, IllegalStateError) as e:
            raise CommitFailed(str(e)) from e

    async def read_to_end(self, tps: set[TP] | None = None) -> list[Record]:
        parts = [tp for tp in self._c.assignment()
                 if tps is None or _tp(tp) in tps]
        if not parts:
            return []
        end = await self._c.end_offsets(parts)  # the last stable offset when read_committed
        out: list[Record] = []
        while True:
            behind = [tp for tp in parts if await self._c.position(tp) < end[tp]]
            if not behind:
                return out
            batch = await self.getmany(500, 10_000)
            for recs in batch.values():
                out.extend(r for r in recs if TopicPartition(r.topic, r.partition) in end)

    async def committed(self, tp: TP) -> int | None:
        off = await self._c.committed(TopicPartition(*tp))
        return None if off is None else int(off)

    def rejoin(self) -> None:
        if self._c is not None and self.group_id is not None:
            self._c._coordinator.request_rejoin()


class KafkaProducer(Producer):
    def __init__(self, bootstrap: str, opts: KafkaOptions,
                 transactional_id: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.opts = opts
        self.transactional_id = transactional_id
        self._p: Any = None  # made by start(), once a broker answers
        self._kwargs = producer_kwargs(
            bootstrap, opts,
            transactional_id=transactional_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=opts.linger_ms,
            max_batch_size=opts.max_batch_bytes,
            max_request_size=opts.max_request_bytes,
            compression_type=opts.compression,
        )

    async def start(self) -> None:
        self._p = await started(lambda: AIOKafkaProducer(**self._kwargs), self.bootstrap,
                                self.opts, "producer")

    async def stop(self) -> None:
        if self._p is not None:
            await self._p.stop()

    async def flush(self) -> None:
        await self._p.flush()

    async def _txn(self, op: Awaitable[Any]) -> None:
        """Await a transaction operation; a fenced producer's error is :class:`Fenced`."""
        try:
            await op
        except FENCED_ERRORS as e:
            raise fenced(e, str(self.transactional_id)) from e

    async def begin_transaction(self) -> None:
        await self._txn(self._p.begin_transaction())

    async def send_offsets_to_transaction(self, offsets: dict[TP, int], group_id: str) -> None:
        await self._txn(self._p.send_offsets_to_transaction(
            {TopicPartition(*tp): off for tp, off in offsets.items()}, group_id))

    async def commit_transaction(self) -> None:
        await self._txn(self._p.commit_transaction())

    async def abort_transaction(self) -> None:
        await self._txn(self._p.abort_transaction())

    async def send(self, msg: Outgoing) -> asyncio.Future[None]:
        send = self._p.send(msg.topic, msg.value, key=msg.key, partition=msg.partition,
                            headers=list(msg.headers.items()) or None)
        if self.transactional_id is None:
            fut: asyncio.Future[Any] = await send
            return fut
        try:
            fut = await send
        except FENCED_ERRORS as e:
            raise fenced(e, self.transactional_id) from e
        return _translated(fut, self.transactional_id)


class KafkaTransport(Transport):
    def __init__(self, bootstrap: str, opts: KafkaOptions | None = None) -> None:
        self.url = bootstrap
        self.bootstrap = bootstrap
        self.opts = opts or KafkaOptions()

    def consumer(
        self,
        topics: list[str],
        group_id: str | None,
        *,
        listener: RebalanceListener | None = None,
        from_end: bool = False,
        read_committed: bool = False,
    ) -> Consumer:
        return KafkaConsumer(self.bootstrap, topics, group_id, listener, from_end, self.opts,
                             read_committed)

    def producer(self, transactional_id: str | None = None) -> Producer:
        return KafkaProducer(self.bootstrap, self.opts, transactional_id)

    async def _admin(self) -> AIOKafkaAdminClient:
        return await self.admin()

    async def admin(self, client_id: str | None = None, what: str = "admin"
                    ) -> AIOKafkaAdminClient:
        """A started admin client on this broker with this transport's options (the caller
        closes it); ``what`` names the user in the error when the broker does not answer."""
        return await started(lambda: AIOKafkaAdminClient(**admin_kwargs(self.bootstrap,
                                                                          self.opts, client_id)),
                             self.bootstrap, self.opts, what)

    async def create_topics(
        self, names: list[str], partitions: int, replication: int = 1
    ) -> list[str]:
        admin = await self._admin()
        try:
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(n, num_partitions=partitions, replication_factor=replication)
                         for n in missing])
            return missing
        finally:
            await admin.close()

    async def delete_topics(self, names: list[str]) -> None:
        admin = await self._admin()
        try:
            existing = set(await admin.list_topics())
            doomed = [n for n in names if n in existing]
            if doomed:
                with contextlib.suppress(UnknownTopicOrPartitionError):
                    await admin.delete_topics(doomed)
        finally:
            await admin.close()

    async def partitions(self, topic: str) -> int:
        admin = await self._admin()
        try:
            desc = await admin.describe_topics([topic])
            for t in desc:
                if t.get("topic") == topic and not t.get("error_code"):
                    return len(t.get("partitions", []))
            return 0
        finally:
            await admin.close()
