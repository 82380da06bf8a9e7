"""``adstream loadtest record``: capture live requests from a topic for a later replay.

The recorder reads every partition of the topic from its current end (no consumer group, so
it never takes records away from the workers) and writes each record with its Kafka
timestamp, which is when its producer sent it: a replay at ``--speed 1`` reproduces those
arrival times.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from loadtest.recording_file import RecordingWriter
from pipeline.headers import now_ms
from workers.settings import Settings

REPORT_EVERY_S = 5.0


class RecordError(RuntimeError):
    """The topic cannot be recorded; the message says what to do."""


async def record(settings: Settings, topic: str, out: Path, *, duration_s: float | None,
                 max_records: int | None = None, stop: asyncio.Event | None = None,
                 started: asyncio.Event | None = None, announce: bool = False) -> int:
    """Record ``topic`` into ``out`` until ``duration_s`` passed, ``max_records`` were
    captured or ``stop`` is set; return how many records were written. ``started`` is set
    once the recorder is positioned at the end of every partition."""
    from workers.roles import transport_for

    url = settings.kafka.bootstrap
    if not url.startswith("memory://"):
        from pipeline.kafka_clients import kafka_options
        from pipeline.kafka_reach import KafkaUnavailable, reach

        try:
            await reach(url, kafka_options(settings.kafka, wait_for_broker=False))
        except KafkaUnavailable as e:
            raise RecordError(f"{e}; give --bootstrap HOST:PORT") from None
    transport = transport_for(settings)
    try:
        if await transport.partitions(topic) == 0:
            raise RecordError(f"topic {topic!r} does not exist at {url}")
        consumer = transport.consumer([topic], None, from_end=True)
        await consumer.start()
        try:
            header = {"topic": topic, "bootstrap": url, "started_ms": now_ms(),
                      "duration_s": duration_s}
            with RecordingWriter(out, header) as writer:
                if started is not None:
                    started.set()
                if announce:
                    print(f"recording {topic} at {url} into {out}"
                          + (f" for {duration_s:g} s" if duration_s else "")
                          + " (Ctrl-C stops)", file=sys.stderr)
                await _capture(consumer, writer, duration_s, max_records, stop, announce)
                return writer.count
        finally:
            await consumer.stop()
    finally:
        await transport.close()


async def _capture(consumer: object, writer: RecordingWriter, duration_s: float | None,
                   max_records: int | None, stop: asyncio.Event | None, announce: bool) -> None:
    from pipeline.transport.base import Consumer

    assert isinstance(consumer, Consumer)
    start = time.monotonic()
    end = start + duration_s if duration_s else float("inf")
    next_report = start + REPORT_EVERY_S
    while (stop is None or not stop.is_set()) and time.monotonic() < end:
        wait_ms = int(max(1, min(200, (end - time.monotonic()) * 1000)))
        batch = await consumer.getmany(wait_ms, 10_000)
        received = now_ms()
        for records in batch.values():
            for rec in records:
                writer.write(rec, received)
                if max_records is not None and writer.count >= max_records:
                    return
        if announce and time.monotonic() >= next_report:
            elapsed = time.monotonic() - start
            print(f"{elapsed:6.1f}s recorded {writer.count} ({writer.count / elapsed:.0f}/s)",
                  file=sys.stderr, flush=True)
            next_report += REPORT_EVERY_S
