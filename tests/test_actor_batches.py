"""Batch semantics of the actor loop on the in-process broker: a fetch is one batch, yet
ordering, dead letters and the commit watermark stay exact per record."""

import asyncio
import time

from pipeline.actor import Actor, Handler, Held
from pipeline.config import ActorSection
from pipeline.transport import TP, Outgoing, Record


async def _produce(t, values, partition=0):
    await (await t.producer().send_many(
        [Outgoing("in", v, partition=partition) for v in values]))


async def _read(t, topic):
    c = t.consumer([topic], None)
    await c.start()
    got = await c.getmany(0, 100_000)
    return {tp: [r.value for r in recs] for tp, recs in got.items()}


class Batches(Handler):
    """Echoes each record; records whose value starts with b'bad' fail alone, b'boom' makes
    the whole batch raise, b'hold' waits on a future the test resolves."""

    name = "batches"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.holds: dict[bytes, asyncio.Future[None]] = {}
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle(self, records):
        self.sizes.append(len(records))
        await self.gate.wait()
        if any(r.value.startswith(b"boom") for r in records):
            raise RuntimeError("the batch cannot be handled")
        out = []
        for r in records:
            if r.value.startswith(b"bad"):
                out.append(ValueError(f"{r.value!r} is bad"))
            elif r.value.startswith(b"hold"):
                fut = asyncio.get_running_loop().create_future()
                self.holds[r.value] = fut
                out.append(Held(fut))
            else:
                out.append([Outgoing("out", r.value, partition=r.partition)])
        return out

    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        return [Outgoing("dlq", record.value, partition=0)]


async def _until(cond, within_s=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_fetch_is_handled_as_one_batch_in_offset_order(transport) -> None:
    values = [f"m{i}".encode() for i in range(300)]
    await _produce(transport, values, 0)
    handler = Batches()
    actor = Actor(transport, handler, "g", ["in"])
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await _until(lambda: actor.stats.produced == 300)
    stop.set()
    await task
    assert max(handler.sizes) > 1  # many records per handler call
    assert actor.stats.batches < 300
    assert (await _read(transport, "out"))[TP("out", 0)] == values
    assert transport.broker.groups["g"].committed[TP("in", 0)] == 300


async def test_only_the_bad_record_of_a_batch_is_dead_lettered(transport) -> None:
    values = [b"a", b"bad-1", b"b", b"boom", b"c"]
    await _produce(transport, values, 0)
    handler = Batches()
    actor = Actor(transport, handler, "g", ["in"])
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await _until(lambda: actor.stats.produced == 5)
    stop.set()
    await task
    assert (await _read(transport, "out"))[TP("out", 0)] == [b"a", b"b", b"c"]
    assert sorted((await _read(transport, "dlq"))[TP("dlq", 0)]) == [b"bad-1", b"boom"]
    assert actor.stats.dead_lettered == 2
    assert transport.broker.groups["g"].committed[TP("in", 0)] == 5


async def test_watermark_never_passes_a_held_record(transport) -> None:
    await _produce(transport, [b"a", b"hold-1", b"b", b"c"], 0)
    handler = Batches()
    actor = Actor(transport, handler, "g", ["in"], ActorSection(commit_interval_ms=10))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await _until(lambda: actor.stats.produced == 3)
    await asyncio.sleep(0.1)
    group = transport.broker.groups["g"]
    assert group.committed.get(TP("in", 0)) == 1  # stops at the unfinished hold-1
    handler.holds[b"hold-1"].set_result(None)
    await _until(lambda: group.committed.get(TP("in", 0)) == 4)
    stop.set()
    await task


async def test_cancelled_hold_is_abandoned_and_not_committed(transport) -> None:
    await _produce(transport, [b"hold-1", b"a"], 0)
    handler = Batches()
    actor = Actor(transport, handler, "g", ["in"],
                  ActorSection(commit_interval_ms=10, drain_timeout_s=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await _until(lambda: actor.stats.produced == 1)
    handler.holds[b"hold-1"].cancel()
    await asyncio.sleep(0.1)
    assert actor.tracker.unsettled() == 0  # the drain need not wait for it
    stop.set()
    await task
    assert transport.broker.groups["g"].committed.get(TP("in", 0), 0) == 0


async def test_revoke_in_the_middle_of_a_batch_abandons_it_uncommitted(transport) -> None:
    await _produce(transport, [f"m{i}".encode() for i in range(50)], 0)
    handler = Batches()
    handler.gate.clear()  # the first batch is in the handler, not finished
    a1 = Actor(transport, handler, "g", ["in"], ActorSection(revoke_timeout_s=0.2))
    stop1 = asyncio.Event()
    t1 = asyncio.create_task(a1.run(stop1))
    await _until(lambda: handler.sizes)
    a2 = Actor(transport, Batches(), "g", ["in"])
    stop2 = asyncio.Event()
    t2 = asyncio.create_task(a2.run(stop2))
    # the rebalance takes the partitions from a1 with its batch unfinished: nothing of it is
    # committed or sent, so the partition's next owner reads every record again
    await _until(lambda: a2.ready.is_set())
    assert a1.stats.produced == 0
    handler.gate.set()
    await _until(lambda: a2.stats.produced + a1.stats.produced >= 50)
    await asyncio.sleep(0.1)
    stop1.set()
    stop2.set()
    await asyncio.gather(t1, t2)
    out = (await _read(transport, "out"))[TP("out", 0)]
    assert out == [f"m{i}".encode() for i in range(50)]  # once each, in order
    assert transport.broker.groups["g"].committed[TP("in", 0)] == 50


class Stalls(Batches):
    """Blocks the whole process (not just this task) once, like SIGSTOP would."""

    stalled = False

    async def handle(self, records):
        if not Stalls.stalled:
            Stalls.stalled = True
            time.sleep(0.5)  # noqa: ASYNC251 - the point: the whole loop stops
        return await super().handle(records)


async def test_a_member_stalled_past_its_session_sends_nothing_it_held(transport) -> None:
    values = [f"m{i}".encode() for i in range(20)]
    await _produce(transport, values, 0)
    Stalls.stalled = False
    a1 = Actor(transport, Stalls(), "g", ["in"], ActorSection(commit_interval_ms=10),
               lost_after_s=0.3)
    stop = asyncio.Event()
    t1 = asyncio.create_task(a1.run(stop))
    await _until(lambda: Stalls.stalled)
    await asyncio.sleep(0.3)
    assert a1.stats.produced == 0  # what it held when it stalled was abandoned, not sent
    assert transport.broker.groups["g"].committed.get(TP("in", 0), 0) == 0
    # a rebalance gives it partitions again: the work is done, once
    a2 = Actor(transport, Batches(), "g", ["in"])
    t2 = asyncio.create_task(a2.run(stop))
    await _until(lambda: a1.stats.produced + a2.stats.produced == 20)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(t1, t2)
    assert (await _read(transport, "out"))[TP("out", 0)] == values
