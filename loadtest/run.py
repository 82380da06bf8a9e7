"""One measured replay against the pipeline, as a RUN document (the JSON that reports read).

A RUN document holds what was sent (traffic file, schedule), what came back (outcomes,
latency percentiles and the encoded HdrHistogram, series over time, the per-stage
breakdown), the verdict against a p99 bound, and the machine, configuration and software.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import run_environment
from loadtest.arrivals import Schedule
from loadtest.plans import RunOptions
from loadtest.replay import Measurement, ProgressSink, replay
from loadtest.summary import summarize
from loadtest.system_under_test import TransportSystem
from loadtest.pipeline_target import Target
from loadtest.traffic import Traffic

RUN_KIND = "adstream.loadtest.run"
SWEEP_KIND = "adstream.loadtest.sweep"
DOC_VERSION = 1


def short_gc_pauses() -> None:
    """Collect the youngest objects more often than the workers' tuning does (runner.tune_gc):
    a generator that sends thousands of requests a second stalls ~20 ms in each collection
    of 50,000 young objects, and a stall shows up as client send lag in every latency."""
    gc.set_threshold(10_000, 100, 20)


def deadlines(traffic: Traffic, schedule: Schedule, deadline_ms: int | None) -> np.ndarray:
    """Each scheduled request's deadline relative to its intended send time (0: none)."""
    if deadline_ms is not None:
        return np.full(len(schedule), deadline_ms, np.int64)
    per_request: np.ndarray = traffic.timeout_ms[schedule.entries]
    return per_request


async def measure(target: Target, traffic: Traffic, schedule: Schedule, opts: RunOptions, *,
                  progress: ProgressSink | None = None, progress_interval_s: float = 1.0,
                  stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Replay ``schedule`` against ``target``; return the RUN document (without environment)."""
    m, send_errors = await replay_target(target, traffic, schedule, opts, progress=progress,
                                         progress_interval_s=progress_interval_s, stop=stop)
    return run_document(m, traffic, opts, send_errors)


async def replay_target(target: Target, traffic: Traffic, schedule: Schedule, opts: RunOptions,
                        *, progress: ProgressSink | None = None,
                        progress_interval_s: float = 1.0, stop: asyncio.Event | None = None,
                        ) -> tuple[Measurement, list[str]]:
    """Replay ``schedule`` against ``target``: the raw measurement and the first send
    errors (each with its request and reason)."""
    system = TransportSystem(target.transport, traffic,
                             requests_topic=target.requests_topic,
                             results_topic=target.results_topic, tag=secrets.token_hex(4))
    m = await replay(system, schedule, deadline_ms=deadlines(traffic, schedule,
                                                             opts.deadline_ms),
                     warmup_s=opts.warmup_s, timeout_s=opts.timeout_s, progress=progress,
                     progress_interval_s=progress_interval_s, stop=stop,
                     batch_s=opts.batch_ms / 1000.0)
    return m, system.send_errors


def run_document(m: Measurement, traffic: Traffic, opts: RunOptions,
                 send_errors: list[str]) -> dict[str, Any]:
    schedule = m.schedule
    doc: dict[str, Any] = {
        "kind": RUN_KIND, "version": DOC_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "traffic": traffic_info(traffic),
        "schedule": {"arrival": schedule.description, "requests": len(schedule),
                     "span_s": round(schedule.span_s, 3), "warmup_s": opts.warmup_s,
                     "timeout_s": opts.timeout_s, "batch_ms": opts.batch_ms,
                     "deadline_ms": opts.deadline_ms if opts.deadline_ms is not None
                     else "from the traffic file"},
        **summarize(m, traffic.n_candidates),
        "send_errors": send_errors,
    }
    doc["slo"] = slo_verdict(doc, opts.slo_p99_ms)
    return doc


def traffic_info(traffic: Traffic) -> dict[str, Any]:
    c = traffic.n_candidates
    return {"file": traffic.source, "kind": traffic.kind, "entries": len(traffic),
            "skipped": len(traffic.skipped),
            "candidates": {"mean": round(float(c.mean()), 1), "p50": int(np.median(c)),
                           "max": int(c.max())}}


def slo_verdict(doc: dict[str, Any], p99_bound_ms: float | None) -> dict[str, Any] | None:
    """Met when p99 ≤ the bound, nothing was lost and no send failed."""
    if p99_bound_ms is None:
        return None
    reasons = []
    p99 = doc["latency_ms"]["p99"]
    if p99 is None:
        reasons.append("no request was answered")
    elif p99 > p99_bound_ms:
        reasons.append(f"p99 {p99:.1f} ms is over the {p99_bound_ms:g} ms bound")
    out = doc["summary"]["outcomes"]
    if out["lost"]:
        reasons.append(f"{out['lost']} request(s) lost (no answer within "
                       f"{doc['schedule']['timeout_s']:g} s)")
    if out["error"]:
        reasons.append(f"{out['error']} request(s) could not be sent")
    return {"p99_ms": p99_bound_ms, "met": not reasons, "reasons": reasons}


async def describe(target: Target) -> dict[str, Any]:
    """Machine, configuration and software of ``target`` (for the RUN document)."""
    partitions = await target.transport.partitions(target.requests_topic)
    return {"machine": run_environment.machine(),
            "config": run_environment.pipeline_config(target.settings,
                                                  with_workers=target.with_workers,
                                                  partitions=partitions or None),
            "software": run_environment.software()}


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


class RunFileError(ValueError):
    """A RUN/SWEEP document that cannot be read; the message says why."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise RunFileError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path}: not JSON ({e}); expected the RUN.json of "
                           "`adstream loadtest replay` or `sweep`") from None
    if not isinstance(doc, dict) or doc.get("kind") not in (RUN_KIND, SWEEP_KIND):
        raise RunFileError(f"{path}: not a load-test result (no \"kind\": {RUN_KIND!r} or "
                           f"{SWEEP_KIND!r}); expected the RUN.json of `adstream loadtest "
                           "replay` or `sweep`")
    if doc.get("version") != DOC_VERSION:
        raise RunFileError(f"{path}: document version {doc.get('version')!r}; this adstream "
                           f"reads version {DOC_VERSION}")
    return doc
