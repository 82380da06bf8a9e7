"""What the load generator itself costs: its CPU per request at a given rate, on real Kafka.

The generator replays generated requests open loop (as ``adstream loadtest replay`` does)
to a trivial responder in its own process (:mod:`loadtest.echo`), so the pipeline's cost is
out of the picture. CPU time of each process (this one, the responder, a local broker) is
read from ``/proc`` around the measured replay. The baseline, from the same run, is the
responder: per request it also does one consume and one produce through the same
transport, with nothing else.

    python -m loadtest.bench_generator --rate 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtest import arrivals, run_environment
from loadtest.bench import BenchError, bench_settings, broker_for
from loadtest.generate import generate, write_jsonl
from loadtest.worker_processes import CpuMeter
from loadtest.plans import BenchPlan, RunOptions
from loadtest.run import replay_target, run_document, short_gc_pauses
from loadtest.pipeline_target import Target
from loadtest.traffic import Traffic
from pipeline.config import amended
from pipeline.runner import loop_factory
from workers.settings import Settings

GENERATOR = "load generator"
RESPONDER = "echo responder"
BROKER = "broker"
BUDGET_MS = 0.1  # the generator's CPU per request the load tester should stay under


def _start_responder(bootstrap: str, requests_topic: str, results_topic: str
                     ) -> subprocess.Popen[bytes]:
    """The echo responder in its own process, once it reads the requests topic."""
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.echo", bootstrap, requests_topic,
                             results_topic], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise BenchError(f"the echo responder did not start (exit {proc.wait()})")
    return proc


async def measure_generator(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Start (or find) the broker and the responder, replay, and return what each cost."""
    from workers.roles import ensure_topics, transport_for

    tmp = Path(tempfile.mkdtemp(prefix="adstream-bench-generator-"))
    broker = await broker_for(settings, tmp)
    responder: subprocess.Popen[bytes] | None = None
    try:
        s = bench_settings(settings, BenchPlan(partitions=args.partitions), broker.bootstrap)
        path = tmp / "traffic.jsonl"
        write_jsonl(path, generate(args.requests, seed=args.seed,
                                   candidates=f"fixed:{args.candidates}",
                                   timeout_ms=args.deadline_ms))
        traffic = Traffic.load(path)
        transport = transport_for(s)
        try:
            await ensure_topics(s, transport)
            responder = await asyncio.to_thread(_start_responder, broker.bootstrap,
                                                s.topics.requests, s.topics.results)
            target = Target(s, transport, with_workers=False)
            warm = arrivals.plan(traffic.at_ms, rate=args.rate, arrival="poisson",
                                 duration_s=min(2.0, args.duration), seed=args.seed + 1)
            await replay_target(target, traffic, warm, RunOptions())  # connections, caches
            pids = {GENERATOR: os.getpid(), RESPONDER: responder.pid}
            if broker.pid is not None:
                pids[BROKER] = broker.pid
            runs = [await _measure_once(target, traffic, args, batch_ms, pids)
                    for batch_ms in args.batch_ms]
        finally:
            await transport.close()
        return {"kind": "adstream.bench_generator", "rate": args.rate,
                "duration_s": args.duration, "candidates": args.candidates,
                "partitions": args.partitions, "bootstrap": broker.bootstrap,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": run_environment.machine(), "runs": runs}
    finally:
        if responder is not None:
            responder.terminate()
            await asyncio.to_thread(responder.wait)
        await broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure_once(target: Target, traffic: Traffic, args: argparse.Namespace,
                        batch_ms: float, pids: dict[str, int]) -> dict[str, Any]:
    """One measured replay at ``args.rate`` sending in bursts of ``batch_ms``."""
    opts = RunOptions(warmup_s=min(2.0, args.duration / 4), timeout_s=10.0, batch_ms=batch_ms)
    schedule = arrivals.plan(traffic.at_ms, rate=args.rate, arrival="poisson",
                             duration_s=args.duration, seed=args.seed)
    meter = CpuMeter(pids)
    meter.start()
    m, send_errors = await replay_target(target, traffic, schedule, opts)
    cpu = meter.stop()
    run = run_document(m, traffic, opts, send_errors)
    sent = run["summary"]["sent"]
    lag: dict[str, Any] = next(
        (st for st in run["stages"] if st["name"] == "client send lag"), {})
    return {"batch_ms": batch_ms, "sent": sent, "measured": run["summary"]["measured"],
            "outcomes": run["summary"]["outcomes"],
            "latency_ms": run["latency_ms"], "send_lag_ms": {k: lag.get(k) for k in
                                                             ("p50", "p99", "max")},
            "cpu_s": cpu, "cpu_ms_per_request": {
                name: None if v is None else round(v * 1000 / max(1, sent), 4)
                for name, v in cpu.items() if name != "wall"}}


def report_text(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    names = list(doc["runs"][0]["cpu_ms_per_request"])
    lines = [
        f"machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} cpus",
        (f"config: {doc['rate']:g} requests/s poisson, {doc['duration_s']:g} s per run, "
         f"{doc['candidates']} candidates/request, {doc['partitions']} partitions, Kafka at "
         f"{doc['bootstrap']}; answers from a trivial responder in its own process"),
        "CPU ms per request by process, send lag and latency (ms, from intended send times):",
        ("  batch ms  " + "".join(f"{n:>16}" for n in names)
         + "   generator ÷ responder   send lag p50/p99   latency p50/p99   answered/measured"),
    ]
    for r in doc["runs"]:
        per, lag, lat = r["cpu_ms_per_request"], r["send_lag_ms"], r["latency_ms"]
        gen, base = per.get(GENERATOR), per.get(RESPONDER)
        ratio = f"{gen / base:.2f}" if gen is not None and base else "–"
        answered = sum(v for k, v in r["outcomes"].items() if k not in ("lost", "error"))
        lines.append(
            f"  {r['batch_ms']:>8g}  " + "".join(
                f"{'–' if per[n] is None else f'{per[n]:.4f}':>16}" for n in names)
            + f"   {ratio:>21}   {_pair(lag['p50'], lag['p99']):>16}   "
            f"{_pair(lat['p50'], lat['p99']):>15}   {answered}/{r['measured']}")
    best = min((r["cpu_ms_per_request"][GENERATOR] for r in doc["runs"]), default=None)
    if best is not None:
        lines.append(f"load generator, cheapest setting: {best:.4f} ms per request against "
                     f"a {BUDGET_MS:g} ms budget: {'met' if best <= BUDGET_MS else 'MISSED'}")
    return "\n".join(lines)


def _pair(a: float | None, b: float | None) -> str:
    return f"{'–' if a is None else f'{a:.1f}'} / {'–' if b is None else f'{b:.1f}'}"


def _ms_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds like 0,2,5, got {text!r}"
                                         ) from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"milliseconds must be ≥ 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    p.add_argument("--candidates", type=int, default=100, help="candidates per request")
    p.add_argument("--requests", type=int, default=2000, help="distinct requests (cycled)")
    p.add_argument("--deadline-ms", type=int, default=100)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--bootstrap", default=None,
                   help="Kafka to use (default: the configured one; started when none answers)")
    p.add_argument("--batch-ms", type=_ms_list, default=[0.0], metavar="MS[,MS…]",
                   help="send due requests in bursts at most this often; several values are "
                        "measured one after the other in the same run (default 0)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, ok in (("--rate", args.rate > 0), ("--duration", args.duration > 0),
                     ("--candidates", args.candidates >= 1), ("--requests", args.requests >= 1),
                     ("--partitions", args.partitions >= 1)):
        if not ok:
            print(f"bench_generator: {flag} must be positive", file=sys.stderr)
            return 2
    settings = Settings()
    if args.bootstrap:
        settings = amended(settings, kafka={"bootstrap": args.bootstrap})
    short_gc_pauses()
    try:
        # the event loop `adstream loadtest replay` runs on (uvloop where installed)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            doc = runner.run(measure_generator(settings, args))
    except BenchError as e:
        print(f"bench_generator: {e}", file=sys.stderr)
        return 2
    print(report_text(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
