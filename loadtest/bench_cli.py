"""The ``adstream bench`` command (see :mod:`loadtest.bench`)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import Any


def cmd_bench(args: argparse.Namespace) -> int:
    from loadtest.bench import BenchError, BenchPlan, bench, report_text
    from loadtest.processes import WorkerStartError
    from loadtest.run import short_gc_pauses, write_json
    from loadtest.target import TargetError
    from pipeline import runner
    from pipeline.cli import settings_from_args
    from workers.settings import Settings

    try:
        plan = BenchPlan(
            candidates=args.candidates, requests=args.requests, deadline_ms=args.deadline_ms,
            slo_p99_ms=args.slo_p99_ms, start_rate=args.start_rate, step_s=args.step_s,
            warmup_s=args.warmup, precision=args.precision, max_steps=args.max_steps,
            steady_fraction=args.steady_fraction, steady_s=args.steady_s,
            overload_factor=args.overload_factor, overload_s=args.overload_s,
            recovery_s=args.recovery_s, limit_s=args.limit_s, warm_s=args.warm_s, partitions=args.partitions,
            fused=args.fused, batch_ms=args.batch_ms, seed=args.seed)
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
    b.add_argument("--candidates", type=int, default=100, help="candidates per request")
    b.add_argument("--requests", type=int, default=2000,
                   help="distinct generated requests (cycled)")
    b.add_argument("--deadline-ms", type=int, default=100,
                   help="each request's deadline after its intended send time (default 100)")
    b.add_argument("--slo-p99-ms", type=float, default=50.0)
    b.add_argument("--start-rate", type=float, default=100.0, help="first sweep step, req/s")
    b.add_argument("--step-s", type=float, default=10.0, help="seconds per sweep step")
    b.add_argument("--warmup", type=float, default=2.0,
                   help="seconds at the start of each step left out")
    b.add_argument("--precision", type=float, default=0.1,
                   help="stop bisecting when the bracket is within this fraction")
    b.add_argument("--max-steps", type=int, default=12)
    b.add_argument("--steady-fraction", type=float, default=0.6)
    b.add_argument("--steady-s", type=float, default=20.0)
    b.add_argument("--overload-factor", type=float, default=5.0)
    b.add_argument("--overload-s", type=float, default=60.0, help="0 skips the overload phase")
    b.add_argument("--recovery-s", type=float, default=20.0,
                   help="seconds at the steady rate after the overload")
    b.add_argument("--limit-s", type=float, default=1.0,
                   help="seconds of raw model timing per batch size")
    b.add_argument("--warm-s", type=float, default=10.0,
                   help="seconds of traffic at --start-rate before anything is measured")
    b.add_argument("--partitions", type=int, default=4)
    b.add_argument("--fused", action="store_true",
                   help="feature extraction inside the scoring process (no ads.features hop)")
    b.add_argument("--batch-ms", type=float, default=0.0, metavar="MS",
                   help="the load generator sends due requests in bursts at most every MS ms "
                        "(less CPU, up to MS + 1 ms of send lag counted in every latency)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--progress", choices=["auto", "rich", "plain", "off"], default="auto")
    b.add_argument("--out", default="BENCH.json")
    b.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the run's config, traffic and worker logs under DIR")
    b.add_argument("--check-targets", action="store_true",
                   help="exit 1 when a target of the throughput issue is missed")
    b.set_defaults(func=cmd_bench)
