"""``adstream loadtest …`` commands: generate, record, replay, sweep, report."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.generate import generate, parse_distribution, write_jsonl

if TYPE_CHECKING:
    from loadtest.run import RunOptions


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
        return _fail("string-cost", f"{bad[0]} must be ≥ 1 (and --requests ≥ --fetch)")
    from loadtest.string_cost import measure, report
    from workers.scoring.repository import ModelRepositoryError

    s = settings_from_args(Settings, args)
    try:
        m = measure(s, requests=args.requests, candidates=args.candidates, fetch=args.fetch,
                    rounds=args.rounds, seed=args.seed)
    except ModelRepositoryError as e:
        return _fail("string-cost", f"{e} (run `adstream model build` first)")
    print(report(m))
    return 0


def _fail(command: str, message: str) -> int:
    print(f"adstream loadtest {command}: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Any:
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


# ---- replay ----------------------------------------------------------------------------------


def _run_options(args: argparse.Namespace) -> RunOptions:
    from loadtest.run import RunOptions

    return RunOptions(warmup_s=args.warmup, timeout_s=args.timeout,
                      deadline_ms=args.deadline_ms, slo_p99_ms=args.slo_p99_ms,
                      batch_ms=args.batch_ms)


def cmd_replay(args: argparse.Namespace) -> int:
    from loadtest import arrivals
    from loadtest.progress import Progress
    from loadtest.run import describe, measure, short_gc_pauses, write_json
    from loadtest.target import TargetError, open_target
    from loadtest.traffic import Traffic, TrafficError
    from pipeline import runner

    problem = _check_common(args)
    if problem:
        return _fail("replay", problem)
    try:
        traffic = Traffic.load(Path(args.file))
        schedule = arrivals.plan(traffic.at_ms, rate=args.rate, arrival=args.arrival,
                                 speed=args.speed, duration_s=args.duration,
                                 requests=args.requests, seed=args.seed)
    except (TrafficError, ValueError) as e:
        return _fail("replay", str(e))
    if args.warmup >= schedule.span_s and args.warmup > 0:
        return _fail("replay", f"--warmup {args.warmup:g} s is as long as the whole run "
                     f"({schedule.span_s:.1f} s of sending): nothing would be measured")
    _note_skipped(traffic)
    settings = _settings(args)
    opts = _run_options(args)

    async def go(stop: asyncio.Event) -> dict[str, Any] | None:
        short_gc_pauses()
        try:
            async with open_target(settings, with_workers=args.with_workers, stop=stop) as t:
                print(f"replaying {len(schedule)} requests ({schedule.description}, "
                      f"{schedule.span_s:.1f} s) from {traffic.source} to "
                      f"{t.requests_topic} at {settings.kafka.bootstrap}", file=sys.stderr)
                with Progress(args.progress, interval_s=args.progress_interval) as progress:
                    doc = await measure(t, traffic, schedule, opts, progress=progress,
                                        progress_interval_s=progress.interval_s, stop=stop)
                doc.update(await describe(t))
                doc["config"].update(_labels(args))
                return doc
        except TargetError as e:
            print(f"adstream loadtest replay: {e}", file=sys.stderr)
            return None

    doc = runner.run(go)
    if doc is None:
        return 2
    doc["command"] = _command_line(args, "replay")
    write_json(doc, Path(args.out))
    _print_run(doc)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        _write_html(doc, Path(args.html))
    slo = doc["slo"]
    if slo is not None and not slo["met"]:
        print("SLO missed: " + "; ".join(slo["reasons"]), file=sys.stderr)
        return 1
    return 130 if doc["summary"]["interrupted"] else 0


def _labels(args: argparse.Namespace) -> dict[str, str]:
    return dict(label.split("=", 1) for label in args.label)


def _check_common(args: argparse.Namespace) -> str | None:
    bad = [label for label in args.label if "=" not in label or label.startswith("=")]
    if bad:
        return f"--label {bad[0]!r}: expected KEY=VALUE"
    if args.timeout <= 0:
        return f"--timeout must be > 0 seconds, got {args.timeout:g}"
    if args.progress_interval is not None and args.progress_interval <= 0:
        return f"--progress-interval must be > 0 seconds, got {args.progress_interval:g}"
    if getattr(args, "warmup", 0) < 0:
        return f"--warmup must be ≥ 0 seconds, got {args.warmup:g}"
    if args.deadline_ms is not None and args.deadline_ms <= 0:
        return f"--deadline-ms must be > 0, got {args.deadline_ms}"
    if args.slo_p99_ms is not None and args.slo_p99_ms <= 0:
        return f"--slo-p99-ms must be > 0, got {args.slo_p99_ms:g}"
    if not 0 <= args.batch_ms <= 1000:
        return f"--batch-ms must be in [0, 1000] ms, got {args.batch_ms:g}"
    for flag in ("out", "html"):
        value = getattr(args, flag, None)
        if value and not Path(value).resolve().parent.is_dir():
            return f"--{flag} {value}: the directory {Path(value).parent} does not exist"
    return None


def _note_skipped(traffic: Any) -> None:
    if traffic.skipped:
        print(f"skipped {len(traffic.skipped)} unreadable record(s) of {traffic.source} "
              f"(e.g. {traffic.skipped[0]})", file=sys.stderr)


def _print_run(doc: dict[str, Any]) -> None:
    from loadtest.report import text_summary

    print(text_summary(doc))


def _write_html(doc: dict[str, Any], path: Path) -> None:
    from loadtest.report import render_html

    path.write_text(render_html(doc))
    print(f"wrote {path}", file=sys.stderr)


# ---- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from loadtest.report import main_chart_svg, render_html
    from loadtest.run import RunFileError, read_json

    try:
        doc = read_json(Path(args.run))
    except RunFileError as e:
        return _fail("report", str(e))
    if not args.html and not args.svg:
        _print_run(doc)
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
    from loadtest.record import RecordError, record
    from pipeline import runner

    if args.duration is not None and args.duration <= 0:
        return _fail("record", f"--duration must be > 0 seconds, got {args.duration:g}")
    if args.requests is not None and args.requests < 1:
        return _fail("record", f"--requests must be ≥ 1, got {args.requests}")
    if not Path(args.out).resolve().parent.is_dir():
        return _fail("record", f"--out {args.out}: the directory does not exist")
    settings = _settings(args)
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


# ---- sweep -----------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from loadtest.run import short_gc_pauses, write_json
    from loadtest.sweep import SweepPlan, print_steps, sweep
    from loadtest.target import TargetError
    from loadtest.traffic import Traffic, TrafficError
    from pipeline import runner

    problem = _check_common(args)
    if problem:
        return _fail("sweep", problem)
    try:
        plan = SweepPlan(start_rate=args.start_rate, max_rate=args.max_rate,
                         factor=args.factor, step_s=args.step_duration,
                         precision=args.precision, max_steps=args.max_steps,
                         arrival=args.arrival, seed=args.seed)
        traffic = Traffic.load(Path(args.file))
    except (TrafficError, ValueError) as e:
        return _fail("sweep", str(e))
    if args.warmup >= args.step_duration:
        return _fail("sweep", f"--warmup {args.warmup:g} s must be shorter than "
                     f"--step-duration {args.step_duration:g} s")
    _note_skipped(traffic)
    settings = _settings(args)
    opts = _run_options(args)

    async def go(stop: asyncio.Event) -> dict[str, Any] | None:
        short_gc_pauses()
        try:
            return await sweep(settings, traffic, plan, opts, with_workers=args.with_workers,
                               progress_mode=args.progress,
                               progress_interval_s=args.progress_interval, stop=stop,
                               cooldown_s=args.cooldown)
        except TargetError as e:
            print(f"adstream loadtest sweep: {e}", file=sys.stderr)
            return None

    doc = runner.run(go)
    if doc is None:
        return 2
    doc["config"].update(_labels(args))
    doc["command"] = _command_line(args, "sweep")
    write_json(doc, Path(args.out))
    print_steps(doc)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        _write_html(doc, Path(args.html))
    return 0 if doc["best"] is not None else 1


# ---- the parser ------------------------------------------------------------------------------


def _pipeline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--with-workers", action="store_true",
                   help="run the three roles in this process (needed for memory://; a "
                        "one-command local benchmark against Kafka)")
    p.add_argument("--topic", default=None, help="requests topic (default: topics.requests)")
    p.add_argument("--results-topic", default=None,
                   help="where answers are read (default: topics.results)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds after its intended send time an unanswered request counts "
                        "as lost (default 10)")
    p.add_argument("--deadline-ms", type=int, default=None,
                   help="each request's deadline, ms after its intended send time (default: "
                        "the file's timeout_ms, else the pipeline's default)")
    p.add_argument("--progress", choices=["auto", "rich", "plain", "off"], default="auto",
                   help="live progress: rewritten line on a terminal, plain lines otherwise")
    p.add_argument("--progress-interval", type=float, default=None, metavar="S",
                   help="seconds between progress updates (default 0.25 rich, 1 plain)")
    p.add_argument("--batch-ms", type=float, default=0.0, metavar="MS",
                   help="send the due requests in bursts at most every MS ms (fewer produce "
                        "requests and wake-ups; adds up to MS + 1 ms of send lag, still "
                        "counted in every latency; default 0: each request on time)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the HTML report")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="describe what the client cannot see, e.g. --label scorer_processes=2 "
                        "(repeatable; shown with the configuration in the report)")


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
    rep.add_argument("--warmup", type=float, default=0.0,
                     help="seconds at the start left out of the report")
    rep.add_argument("--slo-p99-ms", type=float, default=None,
                     help="exit 1 when p99 is over this bound or any request is lost")
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
    sw.add_argument("--slo-p99-ms", type=float, required=True)
    sw.add_argument("--start-rate", type=float, default=50.0)
    sw.add_argument("--max-rate", type=float, default=100_000.0)
    sw.add_argument("--factor", type=float, default=2.0, help="rate multiplier while stepping up")
    sw.add_argument("--precision", type=float, default=0.1,
                    help="stop bisecting when the bracket is within this fraction (0.1 = 10%%)")
    sw.add_argument("--max-steps", type=int, default=12)
    sw.add_argument("--step-duration", type=float, default=10.0, help="seconds per step")
    sw.add_argument("--warmup", type=float, default=2.0,
                    help="seconds at the start of each step left out")
    sw.add_argument("--cooldown", type=float, default=1.0,
                    help="seconds between steps once the previous one is drained")
    sw.add_argument("--arrival", choices=["constant", "poisson"], default="poisson")
    sw.add_argument("--out", default="SWEEP.json")
    _pipeline_flags(sw)
    sw.set_defaults(func=cmd_sweep)

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
