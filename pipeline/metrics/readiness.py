"""Liveness and readiness of a worker process, decided from what :class:`Metrics` knows:
the event loop's heartbeat, the actors and their partitions, the broker's last answer, and
the checks the roles added."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.metrics.middleware import Metrics


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


def health(m: Metrics) -> tuple[bool, dict[str, Any]]:
    """Alive unless the event loop stopped running (its heartbeat is old). Before the
    first beat the process is starting (loading models blocks the loop): alive."""
    if m.heartbeat_at is None:
        return True, {"alive": True, "starting": True}
    age = time.monotonic() - m.heartbeat_at
    ok = age < m.stall_after_s
    return ok, {"alive": ok, "event_loop_heartbeat_age_s": round(age, 3)}


def readiness(m: Metrics) -> dict[str, Check]:
    names = sorted(m.expected or m.actors)
    missing = [n for n in names if n not in m.actors]
    stopped = [n for n in names if n in m.stopped]
    checks = {}
    if m.stopping:
        checks["running"] = Check(False, "shutting down: draining in-flight work")
    elif not names:
        checks["running"] = Check(False, "no actors in this process")
    elif missing or stopped:
        checks["running"] = Check(False, "; ".join(
            [f"not started: {', '.join(missing)}"] * bool(missing)
            + [f"stopped: {', '.join(stopped)}"] * bool(stopped)))
    else:
        checks["running"] = Check(True, "consuming: " + ", ".join(names))
    idle = [n for n in names if not m.assigned(n)]
    checks["partitions"] = (
        Check(False, "no partitions assigned to " + ", ".join(idle)
              + " (starting, rebalancing, or more members than partitions)")
        if idle else Check(True, "; ".join(
            f"{n}: {len(m.assigned(n))}" for n in names)))
    fresh = max(3 * m.lag_interval_s, 10.0)
    age = None if m.broker_ok_at is None else time.monotonic() - m.broker_ok_at
    checks["broker"] = (
        Check(True, f"answered {age:.1f}s ago") if age is not None and age < fresh else
        Check(False, f"no answer for {age:.0f}s" if age is not None else
              f"unreachable ({m.broker_error})"))
    for name, check in m.checks.items():
        checks[name] = check()
    return checks
