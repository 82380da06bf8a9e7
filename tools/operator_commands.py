"""Operator commands: ``adstream dlq show|redrive`` and ``adstream results tail``.

Dead letters and results are MessagePack that no Kafka tool shows; these print them as JSON
lines, and send chosen dead letters' original bytes and headers back where they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from pipeline.headers import CONTENT_TYPE, DEADLINE_MS, ORIGIN, STAGE_PREFIX, TRACE_ID, now_ms
from pipeline import runner
from pipeline.transport import Outgoing, Record, Transport
from schemas.encoding import wants_json
from schemas.errors import SchemaError
from schemas.messages import DeadLetter, ScoreResult, decode
from tools.commands.group import command_group
from tools.commands.settings import settings

REDRIVEN_FROM = "redriven_from"  # header on a redriven message: the dead letter it came from
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class OperatorError(Exception):
    """A one-line error for the user (exit 2)."""


# ---- the JSON form of bytes, dead letters and results ----------------------------------------


def bytes_json(b: bytes | None) -> Any:
    """UTF-8 text as a string; anything else as ``{"base64": ...}``."""
    if b is None:
        return None
    try:
        text = b.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return {"base64": base64.b64encode(b).decode("ascii")}


def tree_json(x: Any) -> Any:
    """A decoded MessagePack tree as JSON: bin becomes ``{"base64": ...}``."""
    if isinstance(x, bytes):
        return {"base64": base64.b64encode(x).decode("ascii")}
    if isinstance(x, dict):
        return {str(k): tree_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [tree_json(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):  # no JSON form: say it as text
        return str(x)
    return x


def value_json(value: bytes, content_type: bytes | None = None) -> dict[str, Any]:
    """The original message: its MessagePack tree when it is one (its JSON when its
    content-type said JSON), else text or base64."""
    if content_type is not None and wants_json(content_type):
        try:
            return {"json": json.loads(value)}
        except ValueError:
            return {"raw": bytes_json(value)}
    try:
        return {"msgpack": tree_json(msgpack.unpackb(value, raw=False, strict_map_key=False))}
    except Exception:  # not MessagePack: show it as it is
        return {"raw": bytes_json(value)}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def dead_letter_json(rec: Record, dl: DeadLetter) -> dict[str, Any]:
    return {
        "dlq": rec.where(),
        "ts_ms": dl.ts_ms,
        "time": iso(dl.ts_ms),
        "stage": dl.stage,
        "error": dl.error,
        "source": f"{dl.source_topic}[{dl.source_partition}]@{dl.source_offset}",
        "request_id": dl.request_id,
        "key": bytes_json(dl.key),
        "headers": {k: bytes_json(v) for k, v in dl.headers.items()},
        "value_bytes": len(dl.value),
        "value": value_json(dl.value, dl.headers.get(CONTENT_TYPE)),
    }


def result_json(rec: Record, res: ScoreResult) -> dict[str, Any]:
    trace = rec.headers.get(TRACE_ID)
    return {"where": rec.where(), "trace_id": trace.decode("utf-8", "replace") if trace
            else None, **res.to_json()}


# ---- choosing dead letters ---------------------------------------------------------------------


def parse_time(text: str, at_ms: int) -> int:
    """Epoch ms from ``1700000000000``, ``2026-01-31T12:00:00Z`` or an age (``15m``, ``2h``)."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", t)
    if m:
        return at_ms - int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise OperatorError(f"{text!r} is not a time: give epoch ms, an ISO 8601 time "
                            "(2026-01-31T12:00:00Z) or an age (30s, 15m, 2h, 1d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_position(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not m:
        raise OperatorError(f"--offset {text!r}: expected PARTITION:OFFSET (e.g. 3:17)")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Selection:
    """Which dead letters: all conditions given must hold."""

    reason: str | None = None
    stage: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    source_topic: str | None = None
    positions: frozenset[tuple[int, int]] = frozenset()

    @classmethod
    def from_args(cls, args: argparse.Namespace, at_ms: int) -> Selection:
        return cls(
            reason=args.reason, stage=args.stage,
            since_ms=parse_time(args.since, at_ms) if args.since else None,
            until_ms=parse_time(args.until, at_ms) if args.until else None,
            source_topic=args.source_topic,
            positions=frozenset(parse_position(p) for p in getattr(args, "offset", []) or []))

    @property
    def empty(self) -> bool:
        return self == Selection()

    def __call__(self, rec: Record, dl: DeadLetter) -> bool:
        return ((self.reason is None or self.reason.lower() in dl.error.lower())
                and (self.stage is None or dl.stage == self.stage)
                and (self.since_ms is None or dl.ts_ms >= self.since_ms)
                and (self.until_ms is None or dl.ts_ms <= self.until_ms)
                and (self.source_topic is None or dl.source_topic == self.source_topic)
                and (not self.positions or (rec.partition, rec.offset) in self.positions))


async def read_all(transport: Transport, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its current end, in partition and offset order."""
    if await transport.partitions(topic) == 0:
        raise OperatorError(f"topic {topic!r} does not exist")
    consumer = transport.consumer([topic], None)
    await consumer.start()
    try:
        records = await consumer.read_to_end()
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def dead_letters(records: list[Record], chosen: Selection) -> Iterator[tuple[Record, DeadLetter]]:
    for rec in records:
        try:
            dl = decode(rec.value, DeadLetter)
        except SchemaError as e:
            print(f"adstream dlq: {rec.where()}: not a dead letter ({e})", file=sys.stderr)
            continue
        if chosen(rec, dl):
            yield rec, dl


def redrive_message(rec: Record, dl: DeadLetter, topic: str, deadline_ms: int | None
                    ) -> Outgoing:
    """The original bytes, key and headers, less the failed attempt's stage stamps."""
    headers = {k: v for k, v in dl.headers.items()
               if not k.startswith(STAGE_PREFIX) and k != ORIGIN}
    if deadline_ms is not None:
        headers[DEADLINE_MS] = str(deadline_ms).encode()
    headers[REDRIVEN_FROM] = rec.where().encode()
    return Outgoing(topic, dl.value, key=dl.key, headers=headers)


# ---- commands -----------------------------------------------------------------------------------


def _guard(name: str, go: Any) -> int:
    try:
        return int(runner.run(go))
    except OperatorError as e:
        print(f"adstream {name}: {e}", file=sys.stderr)
        return 2


def _on_dlq(args: argparse.Namespace, name: str,
            act: Callable[[Transport, str, Selection, int], Awaitable[int]]) -> int:
    """Run ``act(transport, dlq topic, the selection of args, now in ms)``: the steps
    ``dlq show`` and ``dlq redrive`` share."""
    from workers.roles import transport_for

    s = settings(args)
    topic = args.topic or s.topics.dlq

    async def go(stop: asyncio.Event) -> int:
        now = now_ms()
        return await act(transport_for(s), topic, Selection.from_args(args, now), now)

    return _guard(name, go)


def cmd_dlq_show(args: argparse.Namespace) -> int:
    async def show(transport: Transport, topic: str, chosen: Selection, now: int) -> int:
        found = dead_letters(await read_all(transport, topic), chosen)
        for shown, (rec, dl) in enumerate(found, 1):
            print(json.dumps(dead_letter_json(rec, dl)), flush=True)
            if args.limit and shown >= args.limit:
                break
        return 0

    return _on_dlq(args, "dlq show", show)


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    async def redrive(transport: Transport, topic: str, chosen: Selection, now: int) -> int:
        if chosen.empty and not args.all:
            raise OperatorError("choose dead letters (--offset, --reason, --stage, --since, "
                                "--until, --source-topic) or give --all")
        picked = list(dead_letters(await read_all(transport, topic), chosen))
        deadline = now + args.deadline_ms if args.deadline_ms else None
        msgs = [(rec, dl, redrive_message(rec, dl, args.to or dl.source_topic, deadline))
                for rec, dl in picked]
        for target in sorted({m.topic for _, _, m in msgs}):
            if await transport.partitions(target) == 0:
                raise OperatorError(f"topic {target!r} does not exist; nothing was sent")
        producer = transport.producer()
        await producer.start()
        try:
            acks = []
            for rec, dl, msg in msgs:
                if not args.dry_run:
                    acks.append(await producer.send(msg))
                print(json.dumps({"dlq": rec.where(), "to": msg.topic,
                                  "request_id": dl.request_id, "error": dl.error,
                                  "sent": not args.dry_run}), flush=True)
            await asyncio.gather(*acks)
        finally:
            await producer.stop()
        verb = "would redrive" if args.dry_run else "redrove"
        print(f"{verb} {len(msgs)} dead letter(s) from {topic}", file=sys.stderr)
        return 0

    return _on_dlq(args, "dlq redrive", redrive)


def cmd_results_tail(args: argparse.Namespace) -> int:
    from workers.roles import transport_for

    s = settings(args)
    topic = args.topic or s.topics.results

    async def go(stop: asyncio.Event) -> int:
        transport = transport_for(s)
        if await transport.partitions(topic) == 0:
            raise OperatorError(f"topic {topic!r} does not exist")
        consumer = transport.consumer([topic], None, from_end=not args.from_beginning,
                                      read_committed=s.actor.delivery == "exactly_once")
        await consumer.start()
        shown = 0

        def show(records: list[Record]) -> bool:
            """Print ``records``' results; True once --count were shown."""
            nonlocal shown
            for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
                try:
                    res = decode(rec.value, ScoreResult, content_type=rec.headers.get(CONTENT_TYPE))
                except SchemaError as e:
                    print(f"adstream results tail: {rec.where()}: {e}", file=sys.stderr)
                    continue
                if args.request_id and res.request_id != args.request_id:
                    continue
                print(json.dumps(result_json(rec, res)), flush=True)
                shown += 1
                if args.count and shown >= args.count:
                    return True
            return False

        try:
            if args.no_follow:
                show(await consumer.read_to_end())
                return 0
            while not stop.is_set():
                batch = await consumer.getmany(200, 1000)
                if show([r for recs in batch.values() for r in recs]):
                    return 0
        finally:
            await consumer.stop()
        return 0

    return _guard("results tail", go)


def _selection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", default=None, help="dead-letter topic (default topics.dlq)")
    p.add_argument("--reason", default=None, help="error contains this text (any case)")
    p.add_argument("--stage", default=None,
                   help="the stage that refused it: features, scorer, aggregator, fused")
    p.add_argument("--since", default=None,
                   help="dead-lettered at or after: epoch ms, ISO 8601 or an age (15m, 2h)")
    p.add_argument("--until", default=None, help="dead-lettered at or before (same forms)")
    p.add_argument("--source-topic", default=None, help="read from this topic originally")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    dsub = command_group(sub, "dlq", "show dead letters; send them back (redrive)")
    show = dsub.add_parser("show", parents=[common],
                           help="dead letters as JSON lines (decoded), oldest first per "
                                "partition")
    _selection_flags(show)
    show.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    show.set_defaults(func=cmd_dlq_show)

    redrive = dsub.add_parser(
        "redrive", parents=[common],
        help="send chosen dead letters' original bytes, key and headers back to their source "
             "topic (or --to TOPIC)")
    _selection_flags(redrive)
    redrive.add_argument("--offset", action="append", default=[], metavar="PARTITION:OFFSET",
                         help="a dead letter's position in the DLQ (repeatable)")
    redrive.add_argument("--all", action="store_true", help="every dead letter (no filter)")
    redrive.add_argument("--to", default=None, help="send to this topic instead")
    redrive.add_argument("--deadline-ms", type=int, default=None, metavar="MS",
                         help="give each a new deadline header, now + MS (the header wins "
                              "over the body's deadline_ms)")
    redrive.add_argument("--dry-run", action="store_true", help="print what would be sent")
    redrive.set_defaults(func=cmd_dlq_redrive)

    rsub = command_group(sub, "results", "read ScoreResults")
    tail = rsub.add_parser("tail", parents=[common],
                           help="decoded results as JSON lines, following new ones")
    tail.add_argument("--topic", default=None, help="results topic (default topics.results)")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest result (default: only new ones)")
    tail.add_argument("--no-follow", action="store_true",
                      help="stop at the current end instead of waiting for more")
    tail.add_argument("-n", "--count", type=int, default=0, help="stop after this many")
    tail.add_argument("--request-id", default=None, help="only this request's results")
    tail.set_defaults(func=cmd_results_tail)
