"""The in-process broker keeps Kafka's semantics: partitions, offsets, groups, commits."""

import asyncio
import itertools

import pytest

from pipeline.transport import TP, Outgoing, open_transport
from pipeline.transport.memory import MemoryBroker

_names = itertools.count()


@pytest.fixture
def transport():
    name = f"memory://t{next(_names)}"
    yield open_transport(name)
    MemoryBroker.drop(name.removeprefix("memory://"))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, set[TP]]] = []

    async def on_revoked(self, tps: set[TP]) -> None:
        self.events.append(("revoked", tps))

    async def on_assigned(self, tps: set[TP]) -> None:
        self.events.append(("assigned", tps))


async def test_keyed_messages_keep_their_partition_and_offsets_increase(transport) -> None:
    await transport.create_topics(["t"], 4)
    assert await transport.create_topics(["t"], 4) == []  # idempotent
    p = transport.producer()
    for i in range(20):
        await p.send(Outgoing("t", str(i).encode(), key=b"user-1" if i % 2 else b"user-2"))
    c = transport.consumer(["t"], None)
    await c.start()
    got = await c.getmany(0, 100)
    assert sum(len(v) for v in got.values()) == 20
    assert len(got) == 2  # two keys, two partitions
    for records in got.values():
        assert [r.offset for r in records] == list(range(10))
        assert len({r.key for r in records}) == 1


async def test_group_members_split_partitions_and_rebalance(transport) -> None:
    await transport.create_topics(["t"], 4)
    r1, r2 = Recorder(), Recorder()
    c1 = transport.consumer(["t"], "g", listener=r1)
    c2 = transport.consumer(["t"], "g", listener=r2)
    await c1.start()
    assert len(c1.assignment()) == 4
    await c2.start()
    assert len(c1.assignment()) == 2 and len(c2.assignment()) == 2
    assert c1.assignment().isdisjoint(c2.assignment())
    assert ("revoked", {TP("t", p) for p in range(4)}) in r1.events
    await c2.stop()
    assert len(c1.assignment()) == 4


async def test_a_new_member_resumes_from_the_committed_offset(transport) -> None:
    await transport.create_topics(["t"], 1)
    p = transport.producer()
    for i in range(10):
        await p.send(Outgoing("t", bytes([i])))
    c = transport.consumer(["t"], "g")
    await c.start()
    recs = (await c.getmany(0, 4))[TP("t", 0)]
    assert [r.offset for r in recs] == [0, 1, 2, 3]
    await c.commit({TP("t", 0): 3})  # offset 3 not done: next reader starts there
    await c.stop()
    c2 = transport.consumer(["t"], "g")
    await c2.start()
    recs = (await c2.getmany(0, 100))[TP("t", 0)]
    assert recs[0].offset == 3 and len(recs) == 7
    assert await c2.committed(TP("t", 0)) == 3


async def test_paused_partitions_are_not_fetched(transport) -> None:
    await transport.create_topics(["t"], 2)
    p = transport.producer()
    for part in (0, 1):
        await p.send(Outgoing("t", b"x", partition=part))
    c = transport.consumer(["t"], "g")
    await c.start()
    c.pause({TP("t", 0)})
    assert set(await c.getmany(0, 10)) == {TP("t", 1)}
    c.resume({TP("t", 0)})
    assert set(await c.getmany(0, 10)) == {TP("t", 0)}


async def test_getmany_wakes_up_when_a_message_arrives(transport) -> None:
    await transport.create_topics(["t"], 1)
    c = transport.consumer(["t"], None, from_end=True)
    await c.start()
    p = transport.producer()

    async def later() -> None:
        await asyncio.sleep(0.05)
        await p.send(Outgoing("t", b"hello"))

    task = asyncio.create_task(later())
    got = await c.getmany(2000, 10)
    await task
    assert [r.value for r in got[TP("t", 0)]] == [b"hello"]


async def test_unknown_topics_are_errors(transport) -> None:
    with pytest.raises(KeyError, match="does not exist"):
        await transport.producer().send(Outgoing("nope", b""))
    with pytest.raises(KeyError, match="does not exist"):
        await transport.consumer(["nope"], "g").start()
