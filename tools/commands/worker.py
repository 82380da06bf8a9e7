"""``adstream worker`` (one role, or N group members under a supervisor, with standbys) and
``adstream run`` (the fused role, or the three roles, in this process)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pipeline import runner
from pipeline.config import ConfigError
from tools.commands.settings import settings


def _run_roles(args: argparse.Namespace, roles: list[str]) -> int:
    from workers.roles import run_roles

    s = settings(args)

    async def go(stop: asyncio.Event) -> int:
        await run_roles(roles, s, stop)
        return 0

    return runner.run(go)


def cmd_worker(args: argparse.Namespace) -> int:
    if args.standby and args.processes is None:
        raise ConfigError("--standby needs --processes: standbys are a supervisor's")
    if args.processes is None:
        return _run_roles(args, [args.role])
    from pipeline.launch import Fork
    from pipeline.supervisor import Supervisor

    s = settings(args)  # validates the configuration once, before any child starts
    if args.standby and not s.kafka.static_membership:
        raise ConfigError("--standby needs kafka.static_membership = true: a standby takes "
                          "a dead member's partitions over by joining as its instance")
    # forks of a zygote that has imported everything a worker imports: a restarted member or
    # a new standby loads in about a second, not a new interpreter's 5-14 s on busy cores
    child = Fork("pipeline.cli:main", _without_processes(sys.argv[1:]),
                 preload=["pipeline.cli", "workers.roles", "tools.commands.worker"])
    port = s.metrics.port

    def child_args(index: int) -> list[str]:
        # each child serves its metrics on its own port: port, port + 1, ...
        return ["--set", f"metrics.port={port + index}"] if port else []

    return Supervisor(child, args.processes, standby=args.standby,
                      stop_timeout_s=s.actor.drain_timeout_s + 10, child_args=child_args).run()


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def _without_processes(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--processes", "--standby"):
            skip = True
        elif not a.startswith(("--processes=", "--standby=")):
            out.append(a)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from workers.roles import topology

    # one process holds every stage, so the default is the one-hop fused role: three hops
    # through Kafka inside one event loop cost ~3x the CPU per request and stall each other
    return _run_roles(args, list(topology(not args.three_hops).roles))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    worker = sub.add_parser("worker", parents=[common], help="run one role")
    worker.add_argument("role", choices=["features", "scorer", "aggregator", "fused"],
                        help="fused = features and scorer in one process, no Kafka hop between")
    worker.add_argument("--processes", type=_at_least(1), default=None, metavar="N",
                        help="run N group members under a supervisor that restarts crashed "
                             "ones and forwards SIGTERM")
    worker.add_argument("--standby", type=_at_least(0), default=0, metavar="K",
                        help="with --processes and kafka.static_membership: keep K more "
                             "children loaded but out of the group; one takes a dead "
                             "member's place (and partitions) at once")
    worker.set_defaults(func=cmd_worker)

    run = sub.add_parser("run", parents=[common],
                         help="serve requests in this process (the fused role; --three-hops: "
                              "the three roles)")
    shape = run.add_mutually_exclusive_group()
    shape.add_argument("--three-hops", action="store_true",
                       help="run features, scorer and aggregator, joined through Kafka "
                            "(ads.features, ads.scores), as separate workers would be")
    shape.add_argument("--fused", action="store_true",
                       help="the fused role: features, model and ranking in one hop (the "
                            "default)")
    run.set_defaults(func=cmd_run, in_process=True)
