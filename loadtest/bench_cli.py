"""The ``adstream bench`` command (see :mod:`loadtest.bench`)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import Any


def cmd_bench(args: argparse.Namespace) -> int:
    from loadtest.bench import BenchError, bench, report_text
    from loadtest.plan_flags import from_args
    from loadtest.plans import BenchPlan
    from loadtest.worker_processes import WorkerStartError
    from loadtest.run import short_gc_pauses, write_json
    from loadtest.pipeline_target import TargetError
    from pipeline import runner
    from pipeline.cli import settings_from_args
    from workers.settings import Settings

    try:
        plan = from_args(BenchPlan, args)
    except ValueError as e:
        print(f"adstream bench: {e}", file=sys.stderr)
        return 2
    if args.log_level is None:
        args.log_level = "warning"
    settings = settings_from_args(Settings, args)

    async def go(stop: asyncio.Event) -> dict[str, Any] | None:
        short_gc_pauses()
        try:
            return await bench(settings, plan, progress_mode=args.progress, stop=stop,
                               keep_dir=Path(args.keep) if args.keep else None)
        except (BenchError, TargetError, WorkerStartError) as e:
            print(f"adstream bench: {e}", file=sys.stderr)
            return None

    doc = runner.run(go)
    if doc is None:
        return 2
    doc["command"] = shlex.join(["adstream", *sys.argv[1:]])
    write_json(doc, Path(args.out))
    print(report_text(doc))
    print(f"wrote {args.out}", file=sys.stderr)
    if args.check_targets and not all(t["met"] for t in doc["targets"]):
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    b = sub.add_parser(
        "bench", parents=[common],
        help="measure the pipeline against the model's raw speed on this machine",
        description="Starts a Kafka broker (unless one answers at --bootstrap) and one worker "
                    "process per role on fresh topics; sweeps the offered rate for the highest "
                    "one meeting --slo-p99-ms; measures p50/p99 and CPU per request by stage "
                    "at --steady-fraction of it; overloads it (--overload-factor for "
                    "--overload-s) and watches memory and recovery; then times raw "
                    "onnxruntime (1 thread) at the batch sizes the scorer formed. Prints the "
                    "ratio and writes BENCH.json.")
    from loadtest.plans import BenchPlan
    from loadtest.plan_flags import add_flags

    add_flags(b, BenchPlan)
    b.add_argument("--progress", choices=["auto", "rich", "plain", "off"], default="auto")
    b.add_argument("--out", default="BENCH.json")
    b.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the run's config, traffic and worker logs under DIR")
    b.add_argument("--check-targets", action="store_true",
                   help="exit 1 when a target of the throughput issue is missed")
    b.set_defaults(func=cmd_bench)
