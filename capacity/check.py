"""The capacity model against the simulation: (a) the simulated bench finds the rate the real
bench found on its machine; (b) a plan's fleet meets its p99 in the simulation."""

from __future__ import annotations

from dataclasses import dataclass

from capacity.figures import CpuFigures, GpuFigures
from capacity.plan import Plan
from capacity.scenarios import bench_streams, plan_streams
from capacity.simulate import Result, highest_rate, simulate


@dataclass(frozen=True)
class BenchCheck:
    bench_rate: float
    sim_rate: float
    bound_ms: float
    sim_p99_ms: float
    background: tuple[float, float]  # the least and most other work, as runnable threads

    @property
    def ratio(self) -> float:
        return self.sim_rate / self.bench_rate


def check_bench(cpu: CpuFigures, *, duration_s: float = 60.0, seed: int = 0) -> BenchCheck:
    """The highest rate whose simulated p99 meets the bench's bound, on the bench's machine."""
    bound_s = cpu.slo_p99_ms / 1000

    def run(rate: float) -> Result:
        return simulate(bench_streams(cpu, rate), duration_s=duration_s, warmup_s=2.0,
                        seed=seed)

    rate, res = highest_rate(run, bound_s, lo=cpu.found_rate / 20, hi=cpu.found_rate * 5)
    levels = cpu.background_levels() or (cpu.background,)
    return BenchCheck(cpu.found_rate, round(rate, 1), cpu.slo_p99_ms,
                      round(res.p(99) * 1000, 1), (round(min(levels), 1), round(max(levels), 1)))


def check_plan(plan: Plan, cpu: CpuFigures, gpu: GpuFigures | None = None, *,
               duration_s: float = 120.0, seed: int = 0) -> Result:
    """The plan's fleet (one replica per role, by symmetry) at its peak rate."""
    return simulate(plan_streams(plan, cpu, gpu), duration_s=duration_s, warmup_s=2.0,
                    seed=seed)
