"""``adstream produce``: send requests from a file to the request topic, and optionally wait
for their results."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from pipeline import runner
from schemas.errors import SchemaError
from schemas.messages import ScoreResult
from tools.commands.request_files import read_requests
from tools.commands.settings import settings


def cmd_produce(args: argparse.Namespace) -> int:
    from workers.client import ResultWaiter, request_message
    from workers.roles import transport_for

    s = settings(args)
    topic = args.topic or s.topics.requests
    results_topic = args.reply_to or s.topics.results

    async def go(stop: asyncio.Event) -> int:
        transport = transport_for(s, wait_for_broker=False)
        if await transport.partitions(topic) == 0:
            print(f"adstream produce: topic {topic!r} does not exist at {s.kafka.bootstrap}; "
                  "run `adstream topics create` first", file=sys.stderr)
            return 2
        bad = sent = 0
        waiter = ResultWaiter(transport, results_topic,
                              read_committed=s.actor.delivery == "exactly_once")
        producer = transport.producer()
        await producer.start()
        futures: list[asyncio.Future[ScoreResult]] = []
        try:
            if args.wait:
                await waiter.__aenter__()
            acks = []
            for where, item in read_requests(args.file, args.format, args.reply_to):
                if isinstance(item, SchemaError):
                    bad += 1
                    print(f"adstream produce: {args.file}:{where}: {item}", file=sys.stderr)
                    continue
                if args.wait:
                    futures.append(waiter.expect(item.request_id))
                acks.append(await producer.send(request_message(item, topic)))
                sent += 1
            await asyncio.gather(*acks)
            print(f"produced {sent} request(s) to {topic}"
                  + (f"; {bad} invalid line(s) skipped" if bad else ""), file=sys.stderr)
            lost = 0
            if args.wait and futures:
                done, pending = await asyncio.wait(futures, timeout=args.timeout)
                for fut in futures:
                    if fut in done:
                        print(json.dumps(fut.result().to_json()), flush=True)
                lost = len(pending)
                if lost:
                    print(f"adstream produce: no result for {lost} request(s) within "
                          f"{args.timeout}s", file=sys.stderr)
            return 1 if (bad or lost) else 0
        finally:
            await producer.stop()
            if args.wait:
                await waiter.__aexit__(None, None, None)

    return runner.run(go)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    produce = sub.add_parser("produce", parents=[common],
                             help="send requests (JSON lines or MessagePack) to ads.requests")
    produce.add_argument("file", help="a .jsonl / .msgpack file, or - for standard input")
    produce.add_argument("--format", choices=["auto", "jsonl", "msgpack"], default="auto")
    produce.add_argument("--wait", action="store_true",
                         help="wait for each request's result and print it as a JSON line")
    produce.add_argument("--timeout", type=float, default=30.0,
                         help="seconds to wait for results with --wait (default 30)")
    produce.add_argument("--topic", default=None, help="request topic (default topics.requests)")
    produce.add_argument("--reply-to", default=None,
                         help="topic for the results (must exist; default topics.results)")
    produce.set_defaults(func=cmd_produce)
