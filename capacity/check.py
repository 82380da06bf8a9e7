"""The capacity model against the simulation: (a) the simulated bench finds the rate the real
bench found on its machine; (b) a plan's fleet meets its p99 in the simulation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capacity.figures import CpuFigures, GpuFigures
from capacity.plan import Plan
from capacity.scenarios import BENCH_MACHINE, bench_streams, plan_streams
from capacity.simulate import Result, highest_rate, simulate


@dataclass(frozen=True)
class BenchCheck:
    bench_rate: float
    sim_rate: float  # the median over the seeds
    sim_rates: tuple[float, ...]  # one per seed
    bound_ms: float
    background: tuple[float, float]  # the least and most other work inferred, runnable threads

    @property
    def ratio(self) -> float:
        return self.sim_rate / self.bench_rate


def check_bench(cpu: CpuFigures, *, duration_s: float = 70.0, seeds: int = 3) -> BenchCheck:
    """The highest rate whose simulated p99 meets the bench's bound, on the bench's machine
    with its other work step by step as :func:`other_work` infers it; the median over
    ``seeds`` runs (the simulated p99 under work that comes and goes is itself noisy)."""
    bound_s = cpu.slo_p99_ms / 1000
    levels = other_work(cpu)
    rates = []
    for seed in range(seeds):
        def run(rate: float, seed: int = seed) -> Result:
            return simulate(bench_streams(cpu, rate, levels), duration_s=duration_s,
                            warmup_s=2.0, seed=seed)

        rate, _ = highest_rate(run, bound_s, lo=cpu.found_rate / 20, hi=cpu.found_rate * 5)
        rates.append(round(rate, 1))
    return BenchCheck(cpu.found_rate, float(np.median(rates)), tuple(rates), cpu.slo_p99_ms,
                      (min(levels), max(levels)))


def median_ratio(checks: list[BenchCheck]) -> tuple[float, float, float]:
    """Over repeats of one bench: the median found rate, the median simulated rate and
    their ratio (the bench's own found rate moves by 2× between runs on a shared VM)."""
    bench = float(np.median([c.bench_rate for c in checks]))
    sim = float(np.median([c.sim_rate for c in checks]))
    return bench, sim, sim / bench


def other_work(cpu: CpuFigures, *, most: float = 8.0, duration_s: float = 10.0
               ) -> tuple[float, ...]:
    """Other work on the bench machine in each sweep step, as runnable threads: the count
    with which the simulated bench at that step's rate makes our processes wait for a core
    as long per CPU second as they did there (bisection). The machine's busy cores would
    miss what slowed them beside their own work: a hypervisor's steal, other processes'
    bursts, our own threads woken together by one fetch. Without measured waits: the other
    work seen in the busy cores, held steady."""
    if not cpu.step_load:
        return (cpu.background,)

    def slowdown(rate: float, other: float) -> float:
        r = simulate(bench_streams(cpu, rate, other), duration_s=duration_s, warmup_s=1.0)
        return r.slowdown[BENCH_MACHINE]

    levels = []
    for rate, measured in cpu.step_load:
        lo, hi = 0.0, most
        if slowdown(rate, lo) >= measured:
            hi = 0.0
        elif slowdown(rate, hi) < measured:
            lo = most
        while hi - lo > 0.05:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slowdown(rate, mid) < measured else (lo, mid)
        levels.append(round((lo + hi) / 2, 2))
    return tuple(levels)


def check_plan(plan: Plan, cpu: CpuFigures, gpu: GpuFigures | None = None, *,
               duration_s: float = 120.0, seed: int = 0) -> Result:
    """The plan's fleet (one replica per role, by symmetry) at its peak rate."""
    return simulate(plan_streams(plan, cpu, gpu), duration_s=duration_s, warmup_s=2.0,
                    seed=seed)
