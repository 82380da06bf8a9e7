"""``adstream topics create``: the pipeline's topics, and reply topics for callers."""

from __future__ import annotations

import argparse
import asyncio

from pipeline import runner
from pipeline.config import amended
from tools.commands.group import command_group
from tools.commands.settings import settings


def cmd_topics_create(args: argparse.Namespace) -> int:
    from workers.roles import ensure_topics, topics, transport_for

    s = settings(args)
    if args.partitions is not None:
        s = amended(s, topics={"partitions": args.partitions})
    if args.replication is not None:
        s = amended(s, topics={"replication": args.replication})

    async def go(stop: asyncio.Event) -> list[str]:
        transport = transport_for(s, wait_for_broker=False)
        created = await ensure_topics(s, transport)
        if args.reply_topic:  # one partition: a caller's own answers, read in order
            created += await transport.create_topics(args.reply_topic, 1, s.topics.replication)
        return created

    created = runner.run(go)
    for name in (*topics(s), *args.reply_topic):
        n = 1 if name in args.reply_topic else s.topics.partitions
        state = "created" if name in created else "exists"
        print(f"{name}: {state}" + (f" ({n} partition{'s' if n > 1 else ''})"
                                    if name in created else ""))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    tsub = command_group(sub, "topics", "manage adstream's Kafka topics")
    create = tsub.add_parser("create", parents=[common],
                             help="create the six topics (idempotent)")
    create.add_argument("--partitions", type=int, default=None,
                        help="partitions per topic (default: topics.partitions, 8)")
    create.add_argument("--replication", type=int, default=None)
    create.add_argument("--reply-topic", action="append", default=[], metavar="NAME",
                        help="also create NAME with one partition, for a caller's reply_to "
                             "(repeatable)")
    create.set_defaults(func=cmd_topics_create)
