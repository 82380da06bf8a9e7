"""``adstream loadtest sweep``: the highest rate whose p99 meets a bound (MLPerf LoadGen's
Server scenario, searched the way its ``--find-peak-performance`` does).

The offered rate steps up by a factor until a step fails, then bisects between the last
rate that passed and the first that failed. A step passes when p99 ≤ the bound, nothing
is lost or fails to send, at most 1 % of the answers are ``partial`` or ``expired``, and the
number of requests in flight does not keep growing (a system that falls behind builds a
backlog long before its p99 shows it in a short step).
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import math
import sys
from dataclasses import asdict
from typing import Any, Protocol

from loadtest import arrivals
from loadtest.plans import RunOptions, SweepPlan
from loadtest.progress import Progress
from loadtest.run import DOC_VERSION, SWEEP_KIND, describe, measure, traffic_info
from loadtest.pipeline_target import open_target
from loadtest.traffic import Traffic
from workers.settings import Settings

MAX_DEGRADED = 0.01  # share of partial + expired answers a passing step may have
MAX_BACKLOG_GROWTH = 0.02  # backlog slope a passing step may have, as a share of the rate


class StepProbe(Protocol):
    """Something measured around each step (e.g. the workers' CPU); kept in the step."""

    async def begin(self) -> None: ...

    async def end(self) -> dict[str, Any]: ...


def judge(run: dict[str, Any], slo_p99_ms: float, rate: float) -> list[str]:
    """Why a step fails (empty when it passes)."""
    reasons = []
    p99 = run["latency_ms"]["p99"]
    out = run["summary"]["outcomes"]
    if p99 is None:
        reasons.append("no answers")
    elif p99 > slo_p99_ms:
        reasons.append(f"p99 {p99:.1f} ms > {slo_p99_ms:g} ms")
    if out["lost"]:
        reasons.append(f"{out['lost']} lost")
    if out["error"]:
        reasons.append(f"{out['error']} not sent")
    degraded = out["partial"] + out["expired"]
    if degraded > MAX_DEGRADED * max(1, run["summary"]["measured"]):
        reasons.append(f"{degraded} partial/expired")
    growth = run["summary"]["backlog_growth_per_s"]
    # A backlog of up to rate x p99-bound requests is what meeting the bound allows; over a
    # short step, a slope that stays within that is noise, not a system falling behind.
    window_s = max(run["summary"]["measured"], 1) / max(rate, 1e-9)
    allowed = max(1.0, MAX_BACKLOG_GROWTH * rate, rate * slo_p99_ms / 1000 / window_s)
    if growth > allowed:
        reasons.append(f"backlog grows {growth:.0f}/s")
    return reasons


def next_rate(plan: SweepPlan, passed: list[float], failed: list[float]) -> float | None:
    """Step up while everything passed, step down while everything failed, else bisect;
    None when the search is done."""
    lo = max(passed) if passed else None
    hi = min(failed) if failed else None
    if hi is None:
        assert lo is not None
        return None if lo >= plan.max_rate else min(lo * plan.factor, plan.max_rate)
    if lo is None:
        down = hi / plan.factor
        return None if down < plan.start_rate / plan.factor ** 3 else down
    if hi <= lo or (hi - lo) / lo <= plan.precision:
        return None
    return (lo + hi) / 2


async def sweep(settings: Settings, traffic: Traffic, plan: SweepPlan, opts: RunOptions, *,
                with_workers: bool, progress_mode: str = "auto",
                progress_interval_s: float | None = None, stop: asyncio.Event | None = None,
                cooldown_s: float = 1.0, probe: StepProbe | None = None) -> dict[str, Any]:
    assert opts.slo_p99_ms is not None
    steps: list[dict[str, Any]] = []
    passed: list[float] = []
    failed: list[float] = []
    async with open_target(settings, with_workers=with_workers, stop=stop) as target:
        rate: float | None = plan.start_rate
        while rate is not None and len(steps) < plan.max_steps:
            if stop is not None and stop.is_set():
                break
            phase = ("step up" if not failed else "step down" if not passed else "bisect")
            schedule = arrivals.plan(traffic.at_ms, rate=rate, arrival=plan.arrival,
                                     duration_s=plan.step_s, seed=plan.seed + len(steps))
            if probe is not None:
                await probe.begin()
            with Progress(progress_mode, label=f"step {len(steps) + 1} {rate:,.0f}/s",
                          interval_s=progress_interval_s) as pr:
                run = await measure(target, traffic, schedule, opts, progress=pr,
                                    progress_interval_s=pr.interval_s, stop=stop)
            probed = await probe.end() if probe is not None else None
            if run["summary"]["interrupted"]:
                break
            reasons = judge(run, opts.slo_p99_ms, rate)
            (failed if reasons else passed).append(rate)
            steps.append(_step(run, rate, phase, reasons))
            if probed is not None:
                steps[-1]["probe"] = probed
            print(_step_line(len(steps), steps[-1]), file=sys.stderr, flush=True)
            rate = next_rate(plan, passed, failed)
            if rate is not None:
                await asyncio.sleep(cooldown_s * (1 if not reasons else 3))
                # what earlier steps left alive (the in-process broker keeps every record)
                # is never scanned again by the collector, so steps stay comparable
                gc.freeze()
        env = await describe(target)
    best_i = max((i for i, st in enumerate(steps) if st["passed"]),
                 key=lambda i: steps[i]["rate"], default=None)
    for i, st in enumerate(steps):
        if i != best_i:
            st["run"].pop("samples", None)
    return {
        "kind": SWEEP_KIND, "version": DOC_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "slo_p99_ms": opts.slo_p99_ms, "plan": asdict(plan), "options": asdict(opts),
        "traffic": traffic_info(traffic), "steps": steps,
        "best": None if best_i is None else {"step": best_i, "rate": steps[best_i]["rate"],
                                             "p99_ms": steps[best_i]["p99_ms"]},
        **env,
    }


def _step(run: dict[str, Any], rate: float, phase: str, reasons: list[str]) -> dict[str, Any]:
    lat, s = run["latency_ms"], run["summary"]
    return {"rate": round(rate, 2), "phase": phase, "passed": not reasons, "reasons": reasons,
            "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"],
            "max_ms": lat["max"], "achieved": s["achieved_rate"],
            "lost": s["outcomes"]["lost"],
            "degraded": s["outcomes"]["partial"] + s["outcomes"]["expired"],
            "backlog_growth_per_s": s["backlog_growth_per_s"], "run": run}


def _ms(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _step_line(k: int, st: dict[str, Any]) -> str:
    verdict = "pass" if st["passed"] else "fail: " + "; ".join(st["reasons"])
    achieved = "–" if st["achieved"] is None else f"{st['achieved']:,.0f}"
    return (f"{k:>4}  {st['phase']:<9} {st['rate']:>9,.0f} {achieved:>9} "
            f"{_ms(st['p50_ms']):>8} {_ms(st['p99_ms']):>8} {_ms(st['p99.9_ms']):>9} "
            f"{st['lost']:>5} {st['degraded']:>8} {st['backlog_growth_per_s']:>+8.1f}  "
            f"{verdict}")


HEADER = (f"{'step':>4}  {'phase':<9} {'offered/s':>9} {'answer/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'p99.9 ms':>9} {'lost':>5} {'degraded':>8} {'backlog':>8}  verdict")


def steps_table(doc: dict[str, Any]) -> str:
    lines = [(f"sweep for p99 ≤ {doc['slo_p99_ms']:g} ms ({doc['plan']['arrival']} arrivals, "
             f"{doc['plan']['step_s']:g} s steps)"), HEADER]
    lines += [_step_line(i + 1, st) for i, st in enumerate(doc["steps"])]
    best = doc.get("best")
    if best is None:
        lines.append("no rate met the bound")
    else:
        lines.append(f"highest rate meeting p99 ≤ {doc['slo_p99_ms']:g} ms with no growing "
                     f"backlog: {best['rate']:,.0f} requests/s (p99 {best['p99_ms']:.1f} ms)")
    return "\n".join(lines)


def print_steps(doc: dict[str, Any]) -> None:
    print(steps_table(doc))
