"""The actor loop on the in-process broker: ordering, commits after acks, dead letters, flow."""

import asyncio

from pipeline.actor import Actor, Handler
from pipeline.config import ActorSection
from pipeline.transport import TP, Outgoing, Record
from pipeline.transport.memory import MemoryProducer


class Echo(Handler):
    """Outputs the input; values starting with b'bad' fail; delays come from the value."""

    name = "echo"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, records):
        return await asyncio.gather(*(self._one(r) for r in records), return_exceptions=True)

    async def _one(self, record: Record) -> list[Outgoing]:
        if record.value.startswith(b"bad"):
            raise ValueError(f"value {record.value!r} is bad")
        if record.value.startswith(b"slow"):
            await self.release.wait()
        elif record.value.startswith(b"fast"):
            pass
        else:
            await asyncio.sleep(0.001 * (hash(record.value) % 5))
        return [Outgoing("out", record.value, key=record.key, partition=record.partition)]

    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        return [Outgoing("dlq", record.value + b"|" + str(error).encode(), key=record.key)]


async def _produce(t, values, partition=0):
    p = t.producer()
    for v in values:
        await p.send(Outgoing("in", v, partition=partition))


async def _read_all(t, topic):
    c = t.consumer([topic], None)
    await c.start()
    got = await c.getmany(0, 100_000)
    return {tp: [r.value for r in recs] for tp, recs in got.items()}


async def _until(cond, within_s=5.0):
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _run_until(actor: Actor, cond, within_s=5.0):
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await _until(cond, within_s)
    stop.set()
    await task


async def test_outputs_keep_input_order_per_partition(transport) -> None:
    values = [f"m{i}".encode() for i in range(200)]
    await _produce(transport, values, 0)
    await _produce(transport, values, 1)
    actor = Actor(transport, Echo(), "g", ["in"])
    await _run_until(actor, lambda: actor.stats.produced == 400)
    out = await _read_all(transport, "out")
    assert out[TP("out", 0)] == values and out[TP("out", 1)] == values
    broker = transport.broker
    assert broker.groups["g"].committed == {TP("in", 0): 200, TP("in", 1): 200}


async def test_bad_message_goes_to_dlq_and_the_partition_moves_on(transport) -> None:
    await _produce(transport, [b"a", b"bad-1", b"b"])
    actor = Actor(transport, Echo(), "g", ["in"])
    await _run_until(actor, lambda: actor.stats.produced == 3)
    assert (await _read_all(transport, "out"))[TP("out", 0)] == [b"a", b"b"]
    dlq = [v for vs in (await _read_all(transport, "dlq")).values() for v in vs]
    assert dlq == [b"bad-1|value b'bad-1' is bad"]
    assert actor.stats.dead_lettered == 1
    assert transport.broker.groups["g"].committed[TP("in", 0)] == 3


class SlowAck(MemoryProducer):
    """Appends at once but acknowledges only when ``acked`` is set."""

    acked = asyncio.Event()

    async def send_many(self, msgs):
        for msg in msgs:
            self.broker.append(msg)
        fut = asyncio.get_running_loop().create_future()

        async def ack():
            await SlowAck.acked.wait()
            fut.set_result(None)

        asyncio.get_running_loop().create_task(ack())
        return fut


async def test_offsets_are_committed_only_after_outputs_are_acknowledged(transport) -> None:
    SlowAck.acked = asyncio.Event()
    transport.producer = lambda: SlowAck(transport.broker)
    await _produce(transport, [b"x", b"y"])
    actor = Actor(transport, Echo(), "g", ["in"],
                  ActorSection(commit_interval_ms=10))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await asyncio.sleep(0.3)
    assert transport.broker.groups["g"].committed.get(TP("in", 0), 0) == 0
    assert actor.stats.produced == 0
    SlowAck.acked.set()
    await _until(lambda: transport.broker.groups["g"].committed.get(TP("in", 0)) == 2)
    stop.set()
    await task


async def test_in_flight_budget_pauses_and_resumes_partitions(transport) -> None:
    handler = Echo()
    handler.release.clear()
    await _produce(transport, [b"slow"] * 50)
    actor = Actor(transport, handler, "g", ["in"],
                  ActorSection(max_in_flight=10, resume_in_flight=5))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await asyncio.sleep(0.2)
    assert actor.stats.consumed == 10  # budget reached: nothing more fetched
    assert actor._flow.paused
    handler.release.set()
    await _until(lambda: actor.stats.produced >= 50)
    assert actor._flow.pauses >= 1 and not actor._flow.paused
    stop.set()
    await task


async def test_in_flight_bytes_bound_memory_whatever_the_record_count(transport) -> None:
    """Big records pause the partitions at the byte budget long before the record budget."""
    handler = Echo()
    handler.release.clear()
    await _produce(transport, [b"slow" + b"x" * 996] * 50)
    actor = Actor(transport, handler, "g", ["in"],
                  ActorSection(max_in_flight=1000, resume_in_flight=500,
                               max_in_flight_bytes=5000))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await asyncio.sleep(0.2)
    assert actor._flow.paused
    # one fetch may overshoot by its own records, never by more
    assert 5000 <= actor._flow.in_flight_bytes <= 5000 + 1000 * actor.stats.consumed
    consumed_when_paused = actor.stats.consumed
    await asyncio.sleep(0.2)
    assert actor.stats.consumed == consumed_when_paused  # nothing more fetched while paused
    handler.release.set()
    await _until(lambda: actor.stats.produced >= 50)
    assert not actor._flow.paused and actor._flow.in_flight_bytes == 0
    stop.set()
    await task


async def test_revoked_partition_is_finished_and_committed_before_release(transport) -> None:
    await _produce(transport, [f"m{i}".encode() for i in range(100)], 0)
    await _produce(transport, [f"m{i}".encode() for i in range(100)], 1)
    a1 = Actor(transport, Echo(), "g", ["in"])
    stop = asyncio.Event()
    t1 = asyncio.create_task(a1.run(stop))
    await asyncio.sleep(0.02)
    a2 = Actor(transport, Echo(), "g", ["in"])
    t2 = asyncio.create_task(a2.run(stop))
    await _until(lambda: a1.stats.produced + a2.stats.produced >= 200)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(t1, t2)
    out = await _read_all(transport, "out")
    # every input was answered; duplicates only from work abandoned at the revoke bound
    assert sorted(set(out[TP("out", 0)])) == sorted({f"m{i}".encode() for i in range(100)})
    assert transport.broker.groups["g"].committed == {TP("in", 0): 100, TP("in", 1): 100}
