"""The plans of ``adstream loadtest replay``, ``loadtest sweep`` and ``bench``, declared once.

Each field of a plan is an option of its command (:mod:`loadtest.plan_flags`): its name, help
and bounds stand here, the parser is made from them and the plan is built from the parsed
options, so a plan made in code is checked as the command line is. This module stays light:
the command line's parser imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.arrivals import ARRIVALS
from loadtest.plan_flags import check_bounds, flag


@dataclass(frozen=True)
class RunOptions:
    """How one run is measured; each field is an option of ``adstream loadtest replay``."""

    warmup_s: float = flag(0.0, "seconds at the start left out of the report", name="--warmup",
                           ge=0, unit=" seconds")
    slo_p99_ms: float | None = flag(None, "exit 1 when p99 is over this bound or any request "
                                          "is lost", gt=0)
    timeout_s: float = flag(10.0, "seconds after its intended send time an unanswered request "
                                  "counts as lost (default 10)", name="--timeout", gt=0,
                            unit=" seconds")
    deadline_ms: int | None = flag(None, "each request's deadline, ms after its intended send "
                                         "time (default: the file's timeout_ms, else the "
                                         "pipeline's default)", gt=0)
    batch_ms: float = flag(0.0, "send the due requests in bursts at most every MS ms (fewer "
                                "produce requests and wake-ups; adds up to MS + 1 ms of send "
                                "lag, still counted in every latency; default 0: each request "
                                "on time)", metavar="MS", ge=0, le=1000, unit=" ms")

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class SweepPlan:
    """How the sweep steps; each field is an option of ``adstream loadtest sweep``."""

    start_rate: float = flag(50.0, gt=0)
    max_rate: float = flag(100_000.0)
    factor: float = flag(2.0, "rate multiplier while stepping up", gt=1)
    precision: float = flag(0.1, "stop bisecting when the bracket is within this fraction "
                                 "(0.1 = 10%%)", gt=0, lt=1)
    max_steps: int = flag(12, ge=1)
    step_s: float = flag(10.0, "seconds per step", name="--step-duration", gt=0)
    arrival: str = flag("poisson", choices=ARRIVALS)
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.max_rate < self.start_rate:
            raise ValueError(f"--max-rate {self.max_rate:g} is below --start-rate "
                             f"{self.start_rate:g}")


@dataclass(frozen=True)
class BenchPlan:
    """What the benchmark runs; each field is an option of ``adstream bench``."""

    candidates: int = flag(100, "candidates per request", ge=1)
    requests: int = flag(2000, "distinct generated requests (cycled)", ge=1)
    deadline_ms: int = flag(100, "each request's deadline after its intended send time "
                                 "(default 100)", gt=0)
    slo_p99_ms: float = flag(50.0, gt=0)
    start_rate: float = flag(100.0, "first sweep step, req/s", gt=0)
    step_s: float = flag(10.0, "seconds per sweep step", gt=0)
    warmup_s: float = flag(2.0, "seconds at the start of each step left out", name="--warmup",
                           ge=0)
    precision: float = flag(0.1, "stop bisecting when the bracket is within this fraction",
                            gt=0, lt=1)
    max_steps: int = flag(12, ge=1)
    steady_fraction: float = flag(0.6, gt=0, le=1)
    steady_s: float = flag(20.0, gt=0)
    overload_factor: float = flag(5.0, gt=1)
    overload_s: float = flag(60.0, "0 skips the overload phase", ge=0)
    recovery_s: float = flag(20.0, "seconds at the steady rate after the overload")
    recovery_window_s: float = 1.0
    limit_s: float = flag(1.0, "seconds of raw model timing per batch size", gt=0)
    warm_s: float = flag(10.0, "seconds of traffic at --start-rate before anything is measured",
                         ge=0)  # JIT, caches
    partitions: int = flag(4, ge=1)
    fused: bool = flag(False, "feature extraction inside the scoring process (no ads.features "
                              "hop)")
    batch_ms: float = flag(0.0, "the load generator sends due requests in bursts at most every "
                                "MS ms (less CPU, up to MS + 1 ms of send lag counted in every "
                                "latency)", metavar="MS", ge=0, le=1000)
    seed: int = flag(0)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.recovery_s <= self.recovery_window_s:
            raise ValueError(f"--recovery-s must be longer than {self.recovery_window_s:g} s")
        if self.warmup_s >= self.step_s:
            raise ValueError(f"--warmup {self.warmup_s:g} s must be shorter than --step-s "
                             f"{self.step_s:g} s")

    @property
    def roles(self) -> tuple[str, ...]:
        from workers.roles import topology

        return topology(self.fused).roles

    def sweep_plan(self) -> SweepPlan:
        return SweepPlan(start_rate=self.start_rate, step_s=self.step_s,
                         precision=self.precision, max_steps=self.max_steps, seed=self.seed)
