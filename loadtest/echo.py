"""A trivial responder: answers every request at once with an ``ok`` top-K of its first ads.

It stands in for the pipeline when the load generator itself is measured
(``loadtest.bench_generator``): the answers look like the aggregator's (same message, same
headers, a ``fused`` stage stamp) but cost next to nothing to make, so what the generator
spends is not hidden behind a busy pipeline. Run as ``python -m loadtest.echo BOOTSTRAP
REQUESTS RESULTS`` it prints ``ready`` once it reads the requests topic.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import numpy as np

from pipeline.headers import carry, now_ms, stage_stamps
from pipeline.transport import Outgoing, Transport, open_transport
from schemas.messages import ScoreResult, encode, peek_request, schema_name

RESULT_SCHEMA = schema_name(ScoreResult.TYPE)
TOP_K = 10


def answer(value: bytes, headers: dict[str, bytes], received_ms: int,
           results_topic: str) -> Outgoing | None:
    """The ``ok`` result of one encoded request (None when it is not a readable request)."""
    addr = peek_request(value)
    if addr is None:
        return None
    k = min(TOP_K, addr.n_candidates)
    res = ScoreResult(addr.request_id, "ok", ad_id=np.arange(k, dtype=np.int64),
                      bid=np.ones(k, np.float32), score=np.full(k, 0.5, np.float32),
                      n_candidates=addr.n_candidates, n_scored=addr.n_candidates)
    out = carry(headers, RESULT_SCHEMA) | stage_stamps("fused", received_ms)
    return Outgoing(addr.reply_to or results_topic, encode(res),
                    key=addr.request_id.encode(), headers=out)


async def echo(transport: Transport, requests_topic: str, results_topic: str,
               stop: asyncio.Event, ready: asyncio.Event | None = None) -> int:
    """Answer what arrives on ``requests_topic`` until ``stop``; return how many answered."""
    consumer = transport.consumer([requests_topic], None)
    producer = transport.producer()
    await consumer.start()
    await producer.start()
    answered = 0
    try:
        if ready is not None:
            ready.set()
        while not stop.is_set():
            batch = await consumer.getmany(50, 10_000)
            now = now_ms()
            for records in batch.values():
                for rec in records:
                    out = answer(rec.value, rec.headers, now, results_topic)
                    if out is not None:
                        await producer.send(out)
                        answered += 1
    finally:
        await producer.stop()
        await consumer.stop()
    return answered


async def _serve(bootstrap: str, requests_topic: str, results_topic: str) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport = open_transport(bootstrap)
    try:
        task = asyncio.create_task(echo(transport, requests_topic, results_topic, stop, ready))
        await asyncio.wait([task, asyncio.create_task(ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            print("ready", flush=True)
        await task
    finally:
        await transport.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m loadtest.echo BOOTSTRAP REQUESTS_TOPIC RESULTS_TOPIC",
              file=sys.stderr)
        return 2
    asyncio.run(_serve(*args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
