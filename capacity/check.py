"""The capacity model against the simulation: (a) the simulated bench finds the rate the real
bench found on its machine; (b) a plan's fleet meets its p99 in the simulation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capacity.figures import CpuFigures, GpuFigures
from capacity.plan import Plan
from capacity.scenarios import bench_streams, plan_streams
from capacity.simulate import Result, highest_rate, simulate


@dataclass(frozen=True)
class BenchCheck:
    bench_rate: float
    sim_rate: float  # the median over the seeds
    sim_rates: tuple[float, ...]  # one per seed
    bound_ms: float
    background: tuple[float, float]  # the least and most other work, as runnable threads

    @property
    def ratio(self) -> float:
        return self.sim_rate / self.bench_rate


def check_bench(cpu: CpuFigures, *, duration_s: float = 70.0, seeds: int = 3) -> BenchCheck:
    """The highest rate whose simulated p99 meets the bench's bound, on the bench's machine
    with its other work as measured step by step; the median over ``seeds`` runs (the
    simulated p99 under work that comes and goes is itself noisy)."""
    bound_s = cpu.slo_p99_ms / 1000
    rates = []
    for seed in range(seeds):
        def run(rate: float, seed: int = seed) -> Result:
            return simulate(bench_streams(cpu, rate), duration_s=duration_s, warmup_s=2.0,
                            seed=seed)

        rate, _ = highest_rate(run, bound_s, lo=cpu.found_rate / 20, hi=cpu.found_rate * 5)
        rates.append(round(rate, 1))
    levels = cpu.background_levels() or (cpu.background,)
    return BenchCheck(cpu.found_rate, float(np.median(rates)), tuple(rates), cpu.slo_p99_ms,
                      (round(min(levels), 1), round(max(levels), 1)))


def check_plan(plan: Plan, cpu: CpuFigures, gpu: GpuFigures | None = None, *,
               duration_s: float = 120.0, seed: int = 0) -> Result:
    """The plan's fleet (one replica per role, by symmetry) at its peak rate."""
    return simulate(plan_streams(plan, cpu, gpu), duration_s=duration_s, warmup_s=2.0,
                    seed=seed)
