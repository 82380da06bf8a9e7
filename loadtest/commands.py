"""``adstream loadtest …`` commands: generate, record, replay, sweep, report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from loadtest.generate import generate, parse_distribution, write_jsonl
from loadtest.run_commands import add_parsers, fail, print_run, settings_of


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        parse_distribution(args.candidates)
    except ValueError as e:
        print(f"adstream loadtest generate: {e}", file=sys.stderr)
        return 2
    n = write_jsonl(Path(args.out), generate(
        args.requests, seed=args.seed, candidates=args.candidates, users=args.users,
        ads=args.ads, rate=args.rate, timeout_ms=args.timeout_ms,
        strings=args.string_categoricals))
    print(f"wrote {n} requests to {args.out}", file=sys.stderr)
    return 0


def cmd_string_cost(args: argparse.Namespace) -> int:
    from pipeline.cli import settings_from_args
    from workers.settings import Settings

    checks = [("--requests", args.requests >= args.fetch >= 1), ("--candidates",
              args.candidates >= 1), ("--rounds", args.rounds >= 1)]
    bad = [flag for flag, ok in checks if not ok]
    if bad:
        return fail("string-cost", f"{bad[0]} must be ≥ 1 (and --requests ≥ --fetch)")
    from loadtest.string_cost import measure, report
    from workers.scoring.repository import ModelRepositoryError

    s = settings_from_args(Settings, args)
    try:
        m = measure(s, requests=args.requests, candidates=args.candidates, fetch=args.fetch,
                    rounds=args.rounds, seed=args.seed)
    except ModelRepositoryError as e:
        return fail("string-cost", f"{e} (run `adstream model build` first)")
    print(report(m))
    return 0


# ---- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from loadtest.report import main_chart_svg, render_html
    from loadtest.run import RunFileError, read_json

    try:
        doc = read_json(Path(args.run))
    except RunFileError as e:
        return fail("report", str(e))
    if not args.html and not args.svg:
        print_run(doc)
        return 0
    if args.html:
        Path(args.html).write_text(render_html(doc))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.svg:
        Path(args.svg).write_text(main_chart_svg(doc))
        print(f"wrote {args.svg}", file=sys.stderr)
    return 0


# ---- record ----------------------------------------------------------------------------------


def cmd_record(args: argparse.Namespace) -> int:
    from loadtest.recorder import RecordError, record
    from pipeline import runner

    if args.duration is not None and args.duration <= 0:
        return fail("record", f"--duration must be > 0 seconds, got {args.duration:g}")
    if args.requests is not None and args.requests < 1:
        return fail("record", f"--requests must be ≥ 1, got {args.requests}")
    if not Path(args.out).resolve().parent.is_dir():
        return fail("record", f"--out {args.out}: the directory does not exist")
    settings = settings_of(args)
    topic = args.topic or settings.topics.requests

    async def go(stop: asyncio.Event) -> int:
        try:
            n = await record(settings, topic, Path(args.out), duration_s=args.duration,
                             max_records=args.requests, stop=stop, announce=True)
        except RecordError as e:
            print(f"adstream loadtest record: {e}", file=sys.stderr)
            return 2
        print(f"recorded {n} request(s) from {topic} to {args.out}", file=sys.stderr)
        return 0

    return runner.run(go)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    lt = sub.add_parser("loadtest", help="generate, record and replay traffic; reports")
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
    gen.add_argument("--string-categoricals", action="store_true",
                     help="categorical values as strings (advertiser-12, www.shop7.example.com"
                          ", city-3 …) instead of integer ids")
    gen.set_defaults(func=cmd_generate)

    rec = lsub.add_parser("record", parents=[common],
                          help="capture live requests (with their arrival times) from a topic")
    rec.add_argument("--topic", default=None, help="topic to record (default: topics.requests)")
    rec.add_argument("--out", required=True, help="the recording file to write")
    rec.add_argument("--duration", type=float, default=None,
                     help="seconds to record (default: until --requests or Ctrl-C)")
    rec.add_argument("--requests", type=int, default=None, help="stop after this many")
    rec.set_defaults(func=cmd_record)

    add_parsers(lsub, common)  # replay, sweep

    sc = lsub.add_parser("string-cost", parents=[common],
                         help="CPU per request with string categoricals ÷ with integer ids "
                              "(feature stage and model, in this process)")
    sc.add_argument("--requests", type=int, default=1000)
    sc.add_argument("--candidates", type=int, default=100)
    sc.add_argument("--fetch", type=int, default=20, help="requests per handled batch")
    sc.add_argument("--rounds", type=int, default=5)
    sc.add_argument("--seed", type=int, default=0)
    sc.set_defaults(func=cmd_string_cost)

    from loadtest.bench_cli import add_parser as add_bench

    add_bench(sub, common)

    rp = lsub.add_parser("report", help="summarize a RUN.json / SWEEP.json; write HTML")
    rp.add_argument("run", help="RUN.json (replay) or SWEEP.json (sweep)")
    rp.add_argument("--html", default=None, help="write the self-contained HTML report here")
    rp.add_argument("--svg", default=None,
                    help="write the main plot (latency over time) as an SVG file")
    rp.set_defaults(func=cmd_report)
