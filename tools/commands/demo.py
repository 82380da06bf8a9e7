"""``adstream demo``: start what is missing, score generated requests, summarize."""

from __future__ import annotations

import argparse

from tools.commands.settings import settings


def cmd_demo(args: argparse.Namespace) -> int:
    from tools.demo import run_demo

    if args.log_level is None:
        args.log_level = "warning"  # the demo's own summary is what a newcomer reads
    s = settings(args)
    return run_demo(s, broker=args.broker, requests=args.requests, seed=args.seed,
                    rate=args.rate, fused=not args.three_hops)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", parents=[common],
                          help="start what is missing, score generated requests, summarize")
    demo.add_argument("--broker", choices=["kafka", "memory"], default="kafka",
                      help="kafka (default; started if none answers) or the in-process broker")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rate", type=float, default=200.0, help="requests per second")
    demo.add_argument("--three-hops", action="store_true",
                      help="serve with the three roles joined through Kafka (default: the "
                           "fused role, one hop)")
    demo.set_defaults(func=cmd_demo, in_process=True)
