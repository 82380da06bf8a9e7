"""When each request is meant to be sent: the schedule of an open-loop replay.

Three arrival processes: a constant rate (``i / rate``), Poisson arrivals at a rate
(exponential gaps, as MLPerf LoadGen's Server scenario), or the recorded (or generated)
arrival times of the traffic file, ``speed`` times faster. The file is cycled when more
requests are asked for than it holds. A schedule is computed entirely before the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("constant", "poisson")


@dataclass(frozen=True)
class Schedule:
    """Intended send offsets (seconds from the start, ascending) and which traffic entry each
    request sends."""

    offsets_s: np.ndarray
    entries: np.ndarray
    description: str

    def __len__(self) -> int:
        return len(self.offsets_s)

    @property
    def span_s(self) -> float:
        return float(self.offsets_s[-1]) if len(self) else 0.0


def constant(rate: float, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / rate


def poisson(rate: float, n: int, seed: int) -> np.ndarray:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def recorded(at_ms: np.ndarray, speed: float, n: int) -> np.ndarray:
    """The recorded offsets, cycled (one mean gap between cycles), divided by ``speed``."""
    at = at_ms / 1000.0
    if n <= len(at):
        return at[:n] / speed
    span = float(at[-1])
    period = span + (span / (len(at) - 1) if len(at) > 1 else 1.0)
    cycles = math.ceil(n / len(at))
    out = (at[None, :] + period * np.arange(cycles)[:, None]).ravel()[:n]
    return out / speed


def plan(
    at_ms: np.ndarray,
    *,
    rate: float | None = None,
    arrival: str = "constant",
    speed: float | None = None,
    duration_s: float | None = None,
    requests: int | None = None,
    seed: int = 0,
) -> Schedule:
    """The schedule for a traffic file whose entries arrive at ``at_ms``.

    Exactly one of ``rate`` and ``speed`` (default: ``speed=1``); at most one of
    ``duration_s`` and ``requests`` (default: every entry once).
    """
    size = len(at_ms)
    if rate is not None and speed is not None:
        raise ValueError("give --rate or --speed, not both")
    if duration_s is not None and requests is not None:
        raise ValueError("give --duration or --requests, not both")
    if rate is not None and not rate > 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    if speed is not None and not speed > 0:
        raise ValueError(f"--speed must be > 0, got {speed}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"--duration must be > 0, got {duration_s}")
    if requests is not None and requests < 1:
        raise ValueError(f"--requests must be ≥ 1, got {requests}")
    if arrival not in ARRIVALS:
        raise ValueError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    if rate is None:
        speed = speed or 1.0
        if np.isnan(at_ms).any():
            raise ValueError("the traffic file has no arrival times (at_ms on every line); "
                             "give --rate to send it at a fixed rate")
        if arrival != "constant":
            raise ValueError("--arrival applies to --rate, not to recorded gaps (--speed)")
        if duration_s is not None:
            n = _count_within(lambda k: recorded(at_ms, speed, k), duration_s)
        else:
            n = requests or size
        offsets = recorded(at_ms, speed, n)
        desc = f"recorded gaps at speed {speed:g}"
    else:
        if duration_s is not None:
            if arrival == "constant":
                n = max(1, math.ceil(rate * duration_s - 1e-9))
                offsets = constant(rate, n)
            else:
                offsets = _count_poisson(rate, duration_s, seed)
                n = len(offsets)
        else:
            n = requests or size
            offsets = constant(rate, n) if arrival == "constant" else poisson(rate, n, seed)
        desc = f"{arrival} {rate:g}/s" + (f" (seed {seed})" if arrival == "poisson" else "")
    entries = np.arange(n, dtype=np.int64) % size
    return Schedule(offsets, entries, desc)


def _count_poisson(rate: float, duration_s: float, seed: int) -> np.ndarray:
    n = max(16, int(rate * duration_s * 1.2) + 64)
    while True:
        offsets = poisson(rate, n, seed)
        if offsets[-1] >= duration_s:
            return offsets[offsets < duration_s]
        n *= 2


def _count_within(offsets_for: Callable[[int], np.ndarray], duration_s: float) -> int:
    n = 1024
    while True:
        offsets = offsets_for(n)
        if offsets[-1] >= duration_s:
            return max(1, int(np.searchsorted(offsets, duration_s, side="left")))
        n *= 2
