"""From a measurement to the numbers a report shows: outcomes, rates, latency percentiles,
series over time, the per-stage breakdown and the sender's own lag.

Everything is computed over the measured window (requests whose intended send time is after
the warm-up), except the series, which cover the whole run with the warm-up marked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.replay import ANSWERED, ERROR, STAMPS, STATUSES, Measurement

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CURVE = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95,
         99.99, 99.995, 99.999, 100.0)
STAGES = (  # name, end stamp, start stamp (indices into replay.STAMPS; None = client clock)
    ("queue before features", 1, 0),
    ("features", 2, 1),
    ("queue to scorer", 3, 2),
    ("scorer", 4, 3),
    ("queue to aggregator", 5, 4),
    ("aggregator", 6, 5),
    ("queue before fused", 7, 0),  # the fused topology: features + scorer in one stage
    ("fused", 8, 7),
    ("queue to aggregator after fused", 5, 8),
)
MAX_SAMPLES = 4000


def pkey(p: float) -> str:
    """``50.0 -> "p50"``, ``99.9 -> "p99.9"``."""
    return f"p{p:g}"


def latency_percentiles(h: HdrHistogram) -> dict[str, float | int | None]:
    """p50/p90/p99/p99.9/max (ms) of a histogram of microseconds."""
    if h.get_total_count() == 0:
        return {**{pkey(p): None for p in PERCENTILES}, "max": None, "min": None,
                "mean": None, "count": 0}
    values = h.get_percentile_to_value_dict(list(PERCENTILES))
    out: dict[str, float | int | None] = {pkey(p): values[p] / 1000 for p in PERCENTILES}
    out["max"] = h.get_max_value() / 1000
    out["min"] = h.get_min_value() / 1000
    out["mean"] = round(h.get_mean_value() / 1000, 3)
    out["count"] = h.get_total_count()
    return out


def percentile_curve(h: HdrHistogram) -> list[list[float]]:
    if h.get_total_count() == 0:
        return []
    values = h.get_percentile_to_value_dict(list(CURVE))
    return [[p, values[p] / 1000] for p in CURVE if p in values]


def _q(x: np.ndarray) -> dict[str, float | int]:
    if len(x) == 0:
        return {"count": 0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99]).tolist()
    return {"count": len(x), "mean": round(float(x.mean()), 3), "p50": round(p50, 3),
            "p90": round(p90, 3), "p99": round(p99, 3), "max": round(float(x.max()), 3)}


def stage_durations(stamps: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per row of :data:`STAGES`: which requests (rows of ``stamps``, the results'
    :data:`~loadtest.replay.STAMPS`) passed it, and their time in it (ms)."""
    out = {}
    for name, end, start in STAGES:
        has = (stamps[:, end] > 0) & (stamps[:, start] > 0)
        out[name] = has, (stamps[:, end] - stamps[:, start]).astype(np.float64)
    return out


def stage_breakdown(m: Measurement, mask: np.ndarray) -> list[dict[str, Any]]:
    """Time in each stage and each queue between stages (ms), from the ``ts.*`` headers.

    Stage stamps are whole epoch milliseconds taken on the stages' clocks; the client's own
    parts (send lag, and the way back, which uses the result's ``aggregator.out``) convert
    its monotonic clock to epoch time once per run.
    """
    answered = mask & (m.status >= 0) & (m.status != ERROR)
    st = m.stamps
    lag = (m.sent_s - m.intended_s) * 1000.0
    rows = [{"name": "client send lag", **_q(lag[answered])}]
    for name, (has, ms) in stage_durations(st).items():
        ok = answered & has
        if ok.any():  # the stages of the topology that ran (three hops, or fused)
            rows.append({"name": name, **_q(ms[ok])})
    back = answered & (st[:, 6] > 0)
    received_ms = m.wall0_ms + (m.received_s - m.t0) * 1000.0
    rows.append({"name": "back to client", **_q(received_ms[back] - st[back, 6])})
    return rows


def bucket_width(span_s: float, max_buckets: int = 100) -> float:
    for w in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0):
        if span_s / w <= max_buckets:
            return w
    return math.ceil(span_s / max_buckets)


def series(m: Measurement) -> dict[str, Any]:
    """Per-bucket rates (requests/s), latency by intended send time, and the backlog."""
    n = m.n_sent
    off = m.schedule.offsets_s[:n]
    span = max(m.ended_s - m.t0, float(off[-1]) if n else 0.0, 1e-3)
    w = bucket_width(span)
    nb = math.ceil(span / w) + 1
    sent_t = m.sent_s[:n] - m.t0
    st = m.status[:n]
    got = st >= 0
    recv_t = m.received_s[:n][got] - m.t0
    lat = m.latency_ms()[:n]

    def per_s(t: np.ndarray) -> list[float]:
        idx = np.clip(np.floor(t / w + 1e-9).astype(np.int64), 0, nb - 1)
        rates: list[float] = (np.bincount(idx, minlength=nb) / w).round(2).tolist()
        return rates

    sched_b = np.clip(np.floor(off / w + 1e-9).astype(np.int64), 0, nb - 1)
    p50: list[float | None] = []
    p99: list[float | None] = []
    mx: list[float | None] = []
    lost: list[int] = []
    order = np.argsort(sched_b, kind="stable")
    bounds = np.searchsorted(sched_b[order], np.arange(nb + 1))
    for b in range(nb):
        sel = order[bounds[b]:bounds[b + 1]]
        x = lat[sel]
        x = x[~np.isnan(x)]
        lost.append(int((st[sel] < 0).sum()))
        if len(x):
            q50, q99 = np.percentile(x, [50, 99]).tolist()
            p50.append(round(q50, 3))
            p99.append(round(q99, 3))
            mx.append(round(float(x.max()), 3))
        else:
            p50.append(None)
            p99.append(None)
            mx.append(None)
    ends = (np.arange(nb) + 1) * w
    backlog = (np.searchsorted(np.sort(sent_t), ends, side="right")
               - np.searchsorted(np.sort(recv_t), ends, side="right"))
    ok_t = m.received_s[:n][st == 0] - m.t0
    return {"bucket_s": w, "t": (np.arange(nb) * w).round(3).tolist(),
            "offered": per_s(off), "sent": per_s(sent_t), "answered": per_s(recv_t),
            "ok": per_s(ok_t), "p50": p50, "p99": p99, "max": mx, "lost": lost,
            "backlog": backlog.tolist(), "warmup_s": m.warmup_s}


def samples(m: Measurement) -> dict[str, Any]:
    """Up to MAX_SAMPLES answered requests (intended time, latency, status) for a scatter
    plot, always including the slowest, and the intended times of the lost ones."""
    n = m.n_sent
    lat = m.latency_ms()[:n]
    idx = np.flatnonzero(~np.isnan(lat))
    if len(idx) > MAX_SAMPLES:
        worst = idx[np.argsort(lat[idx])[-MAX_SAMPLES // 10:]]
        rest = np.random.default_rng(0).choice(idx, MAX_SAMPLES - len(worst), replace=False)
        idx = np.unique(np.concatenate([worst, rest]))
    lost = np.flatnonzero(m.status[:n] < 0)[:MAX_SAMPLES]
    return {"t": m.schedule.offsets_s[idx].round(4).tolist(), "ms": lat[idx].round(3).tolist(),
            "status": m.status[idx].tolist(), "statuses": list(STATUSES),
            "lost_t": m.schedule.offsets_s[lost].round(4).tolist()}


def backlog_growth(m: Measurement) -> float:
    """Slope (requests/s per second) of the open-loop backlog, the requests due by then
    (intended send time passed) minus those answered, over the measured window. Clearly
    above zero when the system, or this sender, falls behind the offered rate."""
    n = m.n_sent
    if n < 2:
        return 0.0
    off = m.schedule.offsets_s[:n]
    start, end = max(m.warmup_s, float(off[0])), float(off[-1])
    if end - start < 0.5:
        return 0.0
    ts = np.linspace(start, end, 21)
    due = np.searchsorted(off, ts, side="right")
    recv = np.searchsorted(np.sort(m.received_s[:n][m.status[:n] >= 0] - m.t0), ts,
                           side="right")
    slope = np.polyfit(ts, (due - recv).astype(np.float64), 1)[0]
    return round(float(slope), 3)


def summarize(m: Measurement, n_candidates: np.ndarray) -> dict[str, Any]:
    """The measured part of a RUN document. ``n_candidates`` is per traffic entry."""
    mask = m.measured()
    st = m.status
    outcomes = {s: int(((st == i) & mask).sum()) for i, s in enumerate(STATUSES)}
    outcomes["lost"] = int(((st < 0) & mask).sum())
    n_measured = int(mask.sum())
    answered_mask = mask & (st >= 0) & (st != ERROR)
    n_answered = int(answered_mask.sum())
    off = m.schedule.offsets_s[mask]
    offered = (len(off) - 1) / (off[-1] - off[0]) if len(off) > 1 and off[-1] > off[0] else None
    recv = np.sort(m.received_s[answered_mask])
    span = float(recv[-1] - recv[0]) if n_answered > 1 else 0.0
    achieved = (n_answered - 1) / span if span > 0 else None
    cands = n_candidates[m.schedule.entries]
    scored = int(m.n_scored[answered_mask].sum())
    lag = (m.sent_s[:m.n_sent] - m.intended_s[:m.n_sent]) * 1000.0
    warm = int(((m.schedule.offsets_s < m.warmup_s) & (np.arange(len(st)) < m.n_sent)).sum())
    return {
        "summary": {
            "scheduled": len(m.schedule), "sent": m.n_sent, "warmup_requests": warm,
            "measured": n_measured, "answered": n_answered, "outcomes": outcomes,
            "late_answers": m.late, "duplicate_answers": m.duplicates,
            "interrupted": m.interrupted,
            "offered_rate": None if offered is None else round(offered, 2),
            "achieved_rate": None if achieved is None else round(achieved, 2),
            "candidates_sent": int(cands[mask].sum()),
            "candidates_scored": scored,
            "candidates_scored_per_s": round(scored / span, 1) if span > 0 else None,
            "measured_window_s": round(float(off[-1] - off[0]), 3) if len(off) > 1 else 0.0,
            "backlog_growth_per_s": backlog_growth(m),
        },
        "latency_ms": latency_percentiles(m.histogram),
        "percentile_curve": percentile_curve(m.histogram),
        "histogram": m.histogram.encode().decode("ascii"),
        "sender": {"lag_ms": _q(lag) if len(lag) else {"count": 0}},
        "stages": stage_breakdown(m, mask),
        "series": series(m),
        "samples": samples(m),
        "answered_statuses": list(ANSWERED),
        "stamps": list(STAMPS),
    }
