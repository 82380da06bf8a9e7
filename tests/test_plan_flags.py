"""Plan fields declared with their flags: the parser, the plan and the refusal agree."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from loadtest.plan_flags import add_flags, check_bounds, flag, from_args
from loadtest.plans import BenchPlan, SweepPlan


@dataclass(frozen=True)
class _Plan:
    step_s: float = flag(10.0, "seconds per step", name="--step-duration", gt=0, unit=" s")
    share: float = flag(0.5, ge=0, le=1)
    count: int = flag(3, ge=1)
    fast: bool = flag(False, "go fast")
    kept: int = 7  # no flag: from code only

    def __post_init__(self) -> None:
        check_bounds(self)


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_flags(p, _Plan)
    return p.parse_args(argv)


def test_flags_are_made_from_the_fields_and_read_back() -> None:
    plan = from_args(_Plan, _parse("--step-duration", "2.5", "--count", "4", "--fast"), kept=9)
    assert plan == _Plan(step_s=2.5, share=0.5, count=4, fast=True, kept=9)
    assert from_args(_Plan, _parse()) == _Plan()


@pytest.mark.parametrize(("argv", "message"), [
    (["--step-duration", "0"], "--step-duration must be > 0 s, got 0"),
    (["--share", "1.5"], "--share must be in [0, 1], got 1.5"),
    (["--count", "0"], "--count must be ≥ 1, got 0"),
])
def test_a_value_out_of_bounds_is_refused_naming_its_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=r"^" + message.replace("[", r"\[") + "$"):
        from_args(_Plan, _parse(*argv))


def test_a_command_can_override_one_flag_only() -> None:
    p = argparse.ArgumentParser()
    add_flags(p, _Plan, "count", default=5, help="how many")
    assert p.parse_args([]).count == 5 and not hasattr(p.parse_args([]), "share")
    with pytest.raises(ValueError, match="one named field"):
        add_flags(argparse.ArgumentParser(), _Plan, default=1)


def test_the_plans_of_code_are_checked_as_the_command_line_is() -> None:
    with pytest.raises(ValueError, match=r"^--precision must be between 0 and 1, got 1$"):
        SweepPlan(precision=1.0)
    with pytest.raises(ValueError, match=r"^--arrival must be one of constant, poisson$"):
        SweepPlan(arrival="bursty")
    with pytest.raises(ValueError, match=r"^--start-rate must be > 0, got 0$"):
        BenchPlan(start_rate=0.0)
