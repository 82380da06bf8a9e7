"""``adstream loadtest replay`` and ``loadtest sweep``: open-loop runs against the pipeline,
measured and written as RUN.json / SWEEP.json (their plans: :mod:`loadtest.plans`)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loadtest.plan_flags import add_flags, from_args
from loadtest.plans import RunOptions, SweepPlan

Document = dict[str, Any]


def fail(command: str, message: str) -> int:
    print(f"adstream loadtest {command}: {message}", file=sys.stderr)
    return 2


def settings_of(args: argparse.Namespace) -> Any:
    """The pipeline's settings with the command's flags (topics, in-process roles) applied."""
    from pipeline.cli import settings_from_args
    from pipeline.config import amended
    from workers.settings import Settings

    args.in_process = getattr(args, "with_workers", False)  # roles and replay in one process
    if getattr(args, "with_workers", False) and args.log_level is None:
        args.log_level = "warning"  # the roles' info lines would drown the progress line
    s = settings_from_args(Settings, args)
    if getattr(args, "topic", None):
        s = amended(s, topics={"requests": args.topic})
    if getattr(args, "results_topic", None):
        s = amended(s, topics={"results": args.results_topic})
    return s


def _command_line(args: argparse.Namespace, command: str) -> str:
    """The command with every option it ran with (defaults included), for the report."""
    parts = ["adstream", "loadtest", command, str(args.file)]
    for key, value in vars(args).items():
        if key in ("func", "command", "loadtest_command", "file") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [x for v in value for x in (flag, str(v))]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The run's options from the flags; ValueError says what is wrong with a flag."""
    bad = [label for label in args.label if "=" not in label or label.startswith("=")]
    if bad:
        raise ValueError(f"--label {bad[0]!r}: expected KEY=VALUE")
    if args.progress_interval is not None and args.progress_interval <= 0:
        raise ValueError(f"--progress-interval must be > 0 seconds, got "
                         f"{args.progress_interval:g}")
    for flag in ("out", "html"):
        value = getattr(args, flag, None)
        if value and not Path(value).resolve().parent.is_dir():
            raise ValueError(f"--{flag} {value}: the directory {Path(value).parent} does not "
                             "exist")
    return from_args(RunOptions, args)


def note_skipped(traffic: Any) -> None:
    if traffic.skipped:
        print(f"skipped {len(traffic.skipped)} unreadable record(s) of {traffic.source} "
              f"(e.g. {traffic.skipped[0]})", file=sys.stderr)


def print_run(doc: Document) -> None:
    from loadtest.report import text_summary

    print(text_summary(doc))


def _measured(command: str, args: argparse.Namespace,
              run: Callable[[asyncio.Event], Awaitable[Document]],
              show: Callable[[Document], None]) -> Document | None:
    """Run ``run`` (with short GC pauses), label the document and write it to --out (and
    --html), shown by ``show``; None when the target could not be reached."""
    from loadtest.report import render_html
    from loadtest.run import short_gc_pauses, write_json
    from loadtest.pipeline_target import TargetError
    from pipeline import runner

    async def go(stop: asyncio.Event) -> Document | None:
        short_gc_pauses()
        try:
            return await run(stop)
        except TargetError as e:
            print(f"adstream loadtest {command}: {e}", file=sys.stderr)
            return None

    doc = runner.run(go)
    if doc is None:
        return None
    doc["config"].update(dict(label.split("=", 1) for label in args.label))
    doc["command"] = _command_line(args, command)
    write_json(doc, Path(args.out))
    show(doc)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        Path(args.html).write_text(render_html(doc))
        print(f"wrote {args.html}", file=sys.stderr)
    return doc


# ---- replay ----------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from loadtest import arrivals
    from loadtest.progress import Progress
    from loadtest.run import describe, measure
    from loadtest.pipeline_target import open_target
    from loadtest.traffic import Traffic, TrafficError

    try:
        opts = _run_options(args)
        traffic = Traffic.load(Path(args.file))
        schedule = arrivals.plan(traffic.at_ms, rate=args.rate, arrival=args.arrival,
                                 speed=args.speed, duration_s=args.duration,
                                 requests=args.requests, seed=args.seed)
    except (TrafficError, ValueError) as e:
        return fail("replay", str(e))
    if args.warmup >= schedule.span_s and args.warmup > 0:
        return fail("replay", f"--warmup {args.warmup:g} s is as long as the whole run "
                    f"({schedule.span_s:.1f} s of sending): nothing would be measured")
    note_skipped(traffic)
    settings = settings_of(args)

    async def run(stop: asyncio.Event) -> Document:
        async with open_target(settings, with_workers=args.with_workers, stop=stop) as t:
            print(f"replaying {len(schedule)} requests ({schedule.description}, "
                  f"{schedule.span_s:.1f} s) from {traffic.source} to "
                  f"{t.requests_topic} at {settings.kafka.bootstrap}", file=sys.stderr)
            with Progress(args.progress, interval_s=args.progress_interval) as progress:
                doc = await measure(t, traffic, schedule, opts, progress=progress,
                                    progress_interval_s=progress.interval_s, stop=stop)
            doc.update(await describe(t))
            return doc

    doc = _measured("replay", args, run, print_run)
    if doc is None:
        return 2
    slo = doc["slo"]
    if slo is not None and not slo["met"]:
        print("SLO missed: " + "; ".join(slo["reasons"]), file=sys.stderr)
        return 1
    return 130 if doc["summary"]["interrupted"] else 0


# ---- sweep -----------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from loadtest.sweep import print_steps, sweep
    from loadtest.traffic import Traffic, TrafficError

    try:
        opts = _run_options(args)
        plan = from_args(SweepPlan, args, seed=args.seed)
        traffic = Traffic.load(Path(args.file))
    except (TrafficError, ValueError) as e:
        return fail("sweep", str(e))
    if opts.warmup_s >= plan.step_s:
        return fail("sweep", f"--warmup {opts.warmup_s:g} s must be shorter than "
                    f"--step-duration {plan.step_s:g} s")
    note_skipped(traffic)
    settings = settings_of(args)

    async def run(stop: asyncio.Event) -> Document:
        return await sweep(settings, traffic, plan, opts, with_workers=args.with_workers,
                           progress_mode=args.progress,
                           progress_interval_s=args.progress_interval, stop=stop,
                           cooldown_s=args.cooldown)

    doc = _measured("sweep", args, run, print_steps)
    if doc is None:
        return 2
    return 0 if doc["best"] is not None else 1


# ---- the parsers -----------------------------------------------------------------------------


def _pipeline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--with-workers", action="store_true",
                   help="run the three roles in this process (needed for memory://; a "
                        "one-command local benchmark against Kafka)")
    p.add_argument("--topic", default=None, help="requests topic (default: topics.requests)")
    p.add_argument("--results-topic", default=None,
                   help="where answers are read (default: topics.results)")
    add_flags(p, RunOptions, "timeout_s", "deadline_ms")
    p.add_argument("--progress", choices=["auto", "rich", "plain", "off"], default="auto",
                   help="live progress: rewritten line on a terminal, plain lines otherwise")
    p.add_argument("--progress-interval", type=float, default=None, metavar="S",
                   help="seconds between progress updates (default 0.25 rich, 1 plain)")
    add_flags(p, RunOptions, "batch_ms")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the HTML report")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="describe what the client cannot see, e.g. --label scorer_processes=2 "
                        "(repeatable; shown with the configuration in the report)")


def add_parsers(lsub: argparse._SubParsersAction[argparse.ArgumentParser],
                common: argparse.ArgumentParser) -> None:
    """The parsers of ``loadtest replay`` and ``loadtest sweep``."""
    rep = lsub.add_parser(
        "replay", parents=[common],
        help="send requests open-loop at their intended times and measure the answers",
        description="Open-loop replay: every request is sent at its intended time whatever "
                    "the answers do, and its latency counts from that time (no coordinated "
                    "omission). Writes RUN.json; exits 1 when --slo-p99-ms is missed or a "
                    "request was lost, 2 on bad input.")
    rep.add_argument("file", help="JSON lines (loadtest generate) or a recording "
                                  "(loadtest record)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="requests per second")
    pace.add_argument("--speed", type=float, default=None,
                      help="replay the file's arrival times X times faster (default 1)")
    rep.add_argument("--arrival", choices=["constant", "poisson"], default="constant",
                     help="with --rate: evenly spaced or Poisson arrivals")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--duration", type=float, default=None, help="seconds of sending")
    size.add_argument("--requests", type=int, default=None,
                      help="number of requests (the file is cycled; default: the file once)")
    add_flags(rep, RunOptions, "warmup_s", "slo_p99_ms")
    rep.add_argument("--out", default="RUN.json", help="the run's JSON (default RUN.json)")
    _pipeline_flags(rep)
    rep.set_defaults(func=cmd_replay)

    sw = lsub.add_parser(
        "sweep", parents=[common],
        help="find the highest rate whose p99 meets a bound with no growing backlog",
        description="Steps the offered rate up (×--factor) until a step misses the bound, "
                    "then bisects between the last good and the first bad rate. A step "
                    "passes when p99 ≤ --slo-p99-ms, nothing is lost, at most 1%% of answers "
                    "are partial or expired, and the backlog does not grow.")
    sw.add_argument("file", help="JSON lines (loadtest generate) or a recording")
    add_flags(sw, RunOptions, "slo_p99_ms", required=True, help=None)
    add_flags(sw, SweepPlan, "start_rate", "max_rate", "factor", "precision", "max_steps",
              "step_s")
    add_flags(sw, RunOptions, "warmup_s", default=2.0,
              help="seconds at the start of each step left out")
    sw.add_argument("--cooldown", type=float, default=1.0,
                    help="seconds between steps once the previous one is drained")
    add_flags(sw, SweepPlan, "arrival")
    sw.add_argument("--out", default="SWEEP.json")
    _pipeline_flags(sw)
    sw.set_defaults(func=cmd_sweep)
