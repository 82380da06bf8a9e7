"""``adstream plan``: replicas, partitions and brokers for a load, from measured figures."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

DEFAULT_FIGURES = "docs/bench/capacity-fused-200.json"
DEFAULT_GPU_FIGURES = "docs/bench/gpu-h100.json"

# the assumptions' flags: (field, help)
_ASSUMED = {
    "peak_factor": "the busiest hour's rate ÷ the day's mean (default 2)",
    "max_utilization": "the most a replica's cores may be busy at the peak (default 0.7)",
    "cores_per_replica": "cores of one worker replica (default 1)",
    "broker_cores": "cores of one broker (default 8)",
    "replication": "the topics' replication factor (default 3)",
    "hop_ms": "one network hop between hosts, ms (default 0.5)",
    "partitions_per_replica": "partitions per consumer replica (default 2)",
    "partition_mb_s": "MB/s one partition may carry (default 10)",
    "broker_mb_s": "MB/s one broker's network carries each way (default 1000)",
    "gpu_max_utilization": "the most a GPU may be busy (default 0.5)",
}


def _count(text: str) -> float:
    try:
        v = float(text.replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return v


def cmd_plan(args: argparse.Namespace) -> int:
    from capacity.figures import FiguresError, load_cpu, load_gpu
    from capacity.plan import Assumptions, PlanError, make_plan, report_text

    def fail(message: str) -> int:
        print(f"adstream plan: {message}", file=sys.stderr)
        return 2

    try:
        a = Assumptions(**{f.name: getattr(args, f.name) for f in fields(Assumptions)
                           if getattr(args, f.name) is not None})
        cpu = load_cpu(Path(args.figures))
        gpu = load_gpu(Path(args.gpu_figures)) if args.gpu else None
        plan = make_plan(cpu, requests_per_day=args.requests_per_day,
                         candidates=args.candidates, p99_ms=args.p99_ms, gpu=gpu,
                         assumptions=a)
    except (ValueError, FiguresError, PlanError) as e:
        return fail(str(e))
    print(report_text(plan))
    if args.simulate:
        from capacity.check import check_plan

        res = check_plan(plan, cpu, gpu, duration_s=args.sim_s)
        verdict = "meets" if res.p(99) * 1000 <= plan.p99_ms and not res.unfinished else "MISSES"
        print(f"  simulated {res.p(99) * 1000:.1f} ms p99 ({res.p(50) * 1000:.1f} ms p50) for "
              f"{len(res.latency_s):,} requests through one replica per role at its share of "
              f"{plan.peak_rate:,.0f}/s, {args.sim_s:g} s: {verdict} {plan.p99_ms:g} ms")
    if args.check_bench is not None:
        from capacity.check import check_bench, median_ratio

        runs = [(args.figures, cpu)]
        try:
            runs += [(f, load_cpu(Path(f))) for f in args.check_bench if f != args.figures]
        except FiguresError as e:
            return fail(str(e))
        checks = []
        for path, figures in runs:
            try:
                c = check_bench(figures)
            except ValueError as e:
                return fail(f"simulating the bench of {path}: {e}")
            checks.append(c)
            print(f"  bench vs simulation ({path}, on {figures.source.machine}): the bench "
                  f"found {c.bench_rate:g}/s at p99 ≤ {c.bound_ms:g} ms, the simulation "
                  f"{c.sim_rate:g}/s (median of {', '.join(f'{r:g}' for r in c.sim_rates)}; "
                  f"ratio {c.ratio:.2f}; other work on the machine {c.background[0]:g}–"
                  f"{c.background[1]:g} runnable threads, inferred step by step from the "
                  "waits for a core)")
        if len(checks) > 1:
            bench, sim, ratio = median_ratio(checks)
            print(f"  over the {len(checks)} bench runs: median found {bench:g}/s, median "
                  f"simulated {sim:g}/s, ratio {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_json(), indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "plan", help="replicas, partitions and brokers for a load, from measured figures",
        description="Turns measured figures (an adstream bench JSON: CPU per request by "
                    "process, the model's time per batch; with --gpu a GPU figures file) into "
                    "replicas per role, partitions per topic and broker throughput for "
                    "--requests-per-day at --p99-ms, and says which figures it used.")
    p.add_argument("--requests-per-day", type=_count, required=True, metavar="N")
    p.add_argument("--candidates", type=int, required=True, metavar="C")
    p.add_argument("--p99-ms", type=float, required=True, metavar="X")
    p.add_argument("--gpu", action="store_true", help="score on GPUs (--gpu-figures)")
    p.add_argument("--figures", default=DEFAULT_FIGURES,
                   help=f"an adstream bench JSON (default {DEFAULT_FIGURES})")
    p.add_argument("--gpu-figures", default=DEFAULT_GPU_FIGURES,
                   help=f"GPU figures (default {DEFAULT_GPU_FIGURES})")
    for name, text in _ASSUMED.items():
        kind = int if name in ("broker_cores", "replication", "partitions_per_replica") else float
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    p.add_argument("--simulate", action="store_true",
                   help="run the plan's fleet through the simulation at the peak rate")
    p.add_argument("--sim-s", type=float, default=120.0, help="simulated seconds (default 120)")
    p.add_argument("--check-bench", nargs="*", default=None, metavar="BENCH",
                   help="simulate the bench's machine and compare the rate it finds; with "
                        "more bench files (repeats of the same bench), each of them too and "
                        "the medians over all")
    p.add_argument("--json", default=None, metavar="FILE", help="write the plan as JSON")
    p.set_defaults(func=cmd_plan)
