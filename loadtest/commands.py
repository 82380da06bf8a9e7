"""``adstream loadtest …`` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.generate import generate, parse_distribution, write_jsonl


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        parse_distribution(args.candidates)
    except ValueError as e:
        print(f"adstream loadtest generate: {e}", file=sys.stderr)
        return 2
    n = write_jsonl(Path(args.out), generate(
        args.requests, seed=args.seed, candidates=args.candidates, users=args.users,
        ads=args.ads, rate=args.rate, timeout_ms=args.timeout_ms))
    print(f"wrote {n} requests to {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    lt = sub.add_parser("loadtest", help="generate traffic (replay and reports: see the README)")
    lsub = lt.add_subparsers(dest="loadtest_command", required=True, metavar="COMMAND")
    gen = lsub.add_parser("generate", help="synthetic requests as JSON lines")
    gen.add_argument("--requests", type=int, required=True)
    gen.add_argument("--out", required=True)
    gen.add_argument("--candidates", default="uniform:20,300",
                     help="fixed:N, uniform:A,B or lognormal:MEDIAN,SIGMA")
    gen.add_argument("--users", type=int, default=10_000)
    gen.add_argument("--ads", type=int, default=20_000)
    gen.add_argument("--rate", type=float, default=500.0,
                     help="base arrival rate (requests/s) for the at_ms timestamps")
    gen.add_argument("--timeout-ms", type=int, default=None,
                     help="per-request deadline relative to when it is produced")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate)
