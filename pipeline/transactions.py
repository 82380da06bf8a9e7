"""Exactly-once output: one transactional producer per input partition.

Everything an actor produces from input partition P goes through P's producer (transactional
id ``<prefix>.<topic>.<P>``), inside an open transaction. Committing P means, in this order,
with no send of P in between (P's lock is held):

1. send P's commit offset to the transaction (``send_offsets_to_transaction``);
2. commit the transaction: its outputs and that offset become visible together to
   ``read_committed`` readers, or (if the process dies first) neither does;
3. begin the next transaction.

The commit offset must cover exactly the inputs whose outputs are in committed
transactions: for handlers that send in input order it is one past the last input fully
sent; handlers that answer out of order must make replays harmless themselves (the
aggregator keeps a changelog of answered requests in the same transactions).

aiokafka's ``send_offsets_to_transaction`` takes only the group id (no KIP-447 fencing by
group generation), so fencing relies on the transactional id: a new owner of P starts a
producer with the same id, which aborts the old owner's open transaction and fences it.
The fenced producer's operations then raise :class:`Fenced`; the actor drops it
(:meth:`PartitionTransactions.discard`), abandons P's work and rejoins the group.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.transport.base import TP, Fenced, Outgoing, Producer, Transport


class PartitionTransactions:
    def __init__(self, transport: Transport, group_id: str, id_prefix: str) -> None:
        self.transport = transport
        self.group_id = group_id
        self.id_prefix = id_prefix
        self._producers: dict[TP, Producer] = {}
        self._locks: dict[TP, asyncio.Lock] = {}
        self._sent_upto: dict[TP, int] = {}
        self._pending: set[TP] = set()  # partitions with sends or offsets not yet committed
        self._committed: dict[TP, int] = {}
        self.commits = 0

    def transactional_id(self, tp: TP) -> str:
        return f"{self.id_prefix}.{tp.topic}.{tp.partition}"

    async def open(self, tps: set[TP]) -> None:
        for tp in sorted(tps):
            if tp in self._producers:
                continue
            producer = self.transport.producer(self.transactional_id(tp))
            await producer.start()  # fences a previous owner of this transactional id
            await producer.begin_transaction()
            self._producers[tp] = producer
            self._locks[tp] = asyncio.Lock()

    def owns(self, tp: TP) -> bool:
        return tp in self._producers

    def lock(self, tp: TP) -> asyncio.Lock:
        return self._locks.setdefault(tp, asyncio.Lock())

    async def send(self, tp: TP, msgs: list[Outgoing]) -> asyncio.Future[Any]:
        """Send ``msgs`` in P's open transaction (the caller holds P's lock); the future
        resolves when all are acknowledged."""
        producer = self._producers.get(tp)
        if producer is None:
            raise Fenced(f"{tp}: its transactional producer was dropped (fenced)")
        self._pending.add(tp)
        return await producer.send_many(msgs)

    def mark_sent(self, tp: TP, offset: int) -> None:
        """Every output of input ``offset`` (and of all before it) is sent."""
        self._sent_upto[tp] = offset + 1

    def sent_upto(self, tp: TP) -> int | None:
        return self._sent_upto.get(tp)

    async def commit(self, tp: TP, offset: int | None) -> None:
        """Commit P's transaction with ``offset``; the caller holds P's lock."""
        producer = self._producers.get(tp)
        if producer is None:
            return
        moved = offset is not None and offset != self._committed.get(tp)
        if not moved and tp not in self._pending:
            return
        if moved and offset is not None:
            await producer.send_offsets_to_transaction({tp: offset}, self.group_id)
            self._committed[tp] = offset
        await producer.commit_transaction()
        self.commits += 1
        self._pending.discard(tp)
        await producer.begin_transaction()

    async def close(self, tps: set[TP]) -> None:
        """Stop P's producers (after their last commit); an open transaction is aborted
        (a fenced producer's was aborted by the broker already)."""
        for tp in tps:
            producer = self._forget(tp)
            if producer is not None:
                try:
                    await producer.abort_transaction()
                except Fenced:
                    pass
                finally:
                    await producer.stop()

    async def discard(self, tp: TP) -> None:
        """Drop P's fenced producer: it can commit nothing more."""
        producer = self._forget(tp)
        if producer is not None:
            await producer.stop()

    def _forget(self, tp: TP) -> Producer | None:
        self._locks.pop(tp, None)
        self._sent_upto.pop(tp, None)
        self._committed.pop(tp, None)
        self._pending.discard(tp)
        return self._producers.pop(tp, None)

    def partitions(self) -> set[TP]:
        return set(self._producers)
