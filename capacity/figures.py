"""The measured figures the capacity model and the simulation use, with where they came from.

Two kinds of file: an ``adstream bench`` JSON (``kind: adstream.bench``; CPU per request by
process, the model's time per batch at the formed sizes, the batcher's settings, the
stages' latencies, the machine) and a GPU figures file (``kind: adstream.capacity.gpu``,
transcribed from a ``scripts/gpu-check`` log by :mod:`capacity.gpu_log`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_KIND = "adstream.bench"
GPU_KIND = "adstream.capacity.gpu"
Z99 = 2.326  # the standard normal's 99th percentile


class FiguresError(ValueError):
    """A figures file is missing, unreadable or lacks a figure; the message names it."""


@dataclass(frozen=True)
class Provenance:
    file: str
    created: str
    machine: str
    command: str

    def line(self) -> str:
        return f"{self.file} (measured {self.created} on {self.machine}; {self.command})"


def _load(path: Path, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise FiguresError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise FiguresError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise FiguresError(f"{path}: kind is {found!r}, expected {kind!r}")
    return doc


def _get(doc: dict[str, Any], path: Path, *keys: str) -> Any:
    x: Any = doc
    for k in keys:
        if not isinstance(x, dict) or k not in x or x[k] is None:
            raise FiguresError(f"{path}: {'.'.join(keys)} is missing")
        x = x[k]
    return x


def interpolate(points: list[tuple[int, float]], rows: float) -> float:
    """Time of a batch of ``rows`` from measured ``(rows, ms)``: piecewise linear; below the
    smallest size its time (a fixed cost dominates small batches), above the largest in
    proportion to rows."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    if rows <= xs[0]:
        return ys[0]
    if rows >= xs[-1]:
        return ys[-1] * rows / xs[-1]
    return float(np.interp(rows, xs, ys))


@dataclass(frozen=True)
class Cost:
    """A process's CPU as measured across the sweep's steps: ``per_request_ms`` for each
    request plus ``per_batch_ms`` for each batch it handled (the model's process: one
    wake-up, plan call, model call and send per fetch) or ``idle_cores`` kept busy whatever
    the rate (polls, heartbeats). Fitted by least squares over the steps."""

    per_request_ms: float
    per_batch_ms: float = 0.0
    idle_cores: float = 0.0


def _fit(steps: list[dict[str, Any]], name: str, batched: bool) -> Cost | None:
    rows = []
    for st in steps:
        pr, summary = st.get("probe") or {}, st["run"].get("summary") or {}
        cpu, wall = (pr.get("cpu_s") or {}).get(name), (pr.get("cpu_s") or {}).get("wall")
        batches = (pr.get("batch_rows") or {}).get("batches")
        if cpu is None or not wall or not summary.get("sent"):
            continue
        other = batches if batched else wall
        if other is None:
            continue
        rows.append((float(other), float(summary["sent"]), float(cpu)))
    if len(rows) < 2:
        return None
    a = np.array([[o, n] for o, n, _ in rows])
    y = np.array([c for _, _, c in rows])
    (k, per_req), *_ = np.linalg.lstsq(a, y, rcond=None)
    if k < 0 or per_req <= 0:  # the steps do not tell the two apart: all per request
        return Cost(float(y.sum() / a[:, 1].sum() * 1000))
    if batched:
        return Cost(float(per_req * 1000), per_batch_ms=float(k * 1000))
    return Cost(float(per_req * 1000), idle_cores=float(k))


@dataclass(frozen=True)
class CpuFigures:
    """One ``adstream bench`` run: what a request costs each process on that machine."""

    source: Provenance
    topology: str  # "fused" or "three hops"
    candidates: int
    chunk_rows: int
    max_batch_rows: int
    max_wait_ms: float
    instances: int
    found_rate: float
    found_p99_ms: float
    slo_p99_ms: float
    cpu_ms: dict[str, float]  # CPU ms per request of each process at the found rate
    cores: dict[str, float]  # cores each process kept busy at the found rate
    machine_cpus: int
    machine_cores_busy: float | None  # every process on the machine, at the found rate
    model_ms: list[tuple[int, float]]  # raw onnxruntime, one thread: (rows, ms per batch)
    model_rows_per_s: float  # at the formed sizes
    sigma: dict[str, float]  # lognormal shape of each worker stage's time (lowest passing rate)
    wait_per_cpu: dict[str, float]  # seconds each process waited for a core per CPU second
    costs: dict[str, Cost]  # each process's CPU per request and per batch (or idle), fitted
    # each sweep step in order: (requests/s achieved, our processes' wall s per CPU s)
    step_load: tuple[tuple[float, float], ...] = ()
    step_s: float = 5.0
    partitions: int = 4  # of the bench's topics

    @property
    def roles(self) -> tuple[str, ...]:
        return ("fused",) if self.topology == "fused" else ("features", "scorer", "aggregator")

    @property
    def model_role(self) -> str:
        return "fused" if self.topology == "fused" else "scorer"

    def batch_ms(self, rows: float) -> float:
        return interpolate(self.model_ms, rows)

    def model_cpu_ms(self, candidates: int) -> float:
        """The model's CPU per request (one thread, at the formed batch sizes): its timing
        is wall time, so the machine's other work is taken out (÷ :attr:`slowdown`)."""
        return candidates / self.model_rows_per_s * 1000 / self.slowdown

    def cost(self, name: str) -> Cost:
        return self.costs.get(name) or Cost(self.cpu_ms[name])

    def loop_ms(self, role: str) -> float:
        """CPU per request of ``role`` outside the model and its per-batch cost (its event
        loop and Kafka client)."""
        ms = self.cost(role).per_request_ms
        if role == self.model_role:
            ms -= self.model_cpu_ms(self.candidates)
        return max(ms, 0.0)

    @property
    def slowdown(self) -> float:
        """Wall seconds per CPU second of one thread of ours beside the machine's other
        work (:attr:`background` threads sharing its cores fairly): how much the other work
        slowed the model's timing, which ran alone but for it."""
        return max(1.0, (self.background + 1) / self.machine_cpus)

    @property
    def background(self) -> float:
        """Other work on the bench machine at the found rate, as runnable threads: the
        cores it kept busy (the machine's busy cores less ours) times the wall seconds per
        CPU second that a thread waited there (ours did: 1 + their wait for a core), the
        count of threads that work keeps runnable (Little's law). Our own processes are not
        in it: the simulation runs them on the cores itself."""
        if self.machine_cores_busy is None:  # a file from before the bench measured it
            return 0.0
        return _other_threads(self.machine_cores_busy, sum(self.cores.values()),
                              _weighted_slowdown(self.wait_per_cpu, self.cpu_ms))


def _weighted_slowdown(waits: dict[str, float], cpu: dict[str, float]) -> float:
    """1 + the CPU-weighted wait for a core of our processes (1 when not measured)."""
    w = [(q, cpu[n]) for n, q in waits.items() if q is not None and cpu.get(n)]
    if not w:
        return 1.0
    return 1.0 + float(sum(q * c for q, c in w) / sum(c for _, c in w))


def _other_threads(busy: float, ours: float, slowdown: float) -> float:
    return round(max(0.0, busy - ours) * slowdown, 3)


def _step_load(step: dict[str, Any]) -> tuple[float, float] | None:
    """One sweep step's achieved rate and how long our processes waited for a core."""
    pr = step.get("probe") or {}
    cpu = {k: v for k, v in (pr.get("cpu_s") or {}).items() if k != "wall"}
    if not pr.get("wait_per_cpu") or step.get("achieved") is None:
        return None
    return float(step["achieved"]), _weighted_slowdown(pr["wait_per_cpu"], cpu)


def _sigma(stages: list[dict[str, Any]], name: str) -> float:
    for st in stages:
        if st.get("name") == name and st.get("count") and st.get("p50") and st.get("p99"):
            return float(min(1.0, max(0.1, math.log(st["p99"] / st["p50"]) / Z99)))
    return 0.5


def load_cpu(path: Path) -> CpuFigures:
    doc = _load(path, BENCH_KIND)
    p = _get(doc, path, "pipeline")
    m = _get(doc, path, "machine")
    cfg = _get(doc, path, "config")
    plan = _get(doc, path, "plan")
    topology = _get(doc, path, "topology")
    roles = ("fused",) if topology == "fused" else ("features", "scorer", "aggregator")
    model = "fused" if topology == "fused" else "scorer"
    cpu = _get(doc, path, "pipeline", "cpu_ms_per_request")
    for r in (*roles, "broker"):
        if cpu.get(r) is None:
            raise FiguresError(f"{path}: pipeline.cpu_ms_per_request.{r} is missing "
                               "(the broker's CPU is read only when it runs on this machine)")
    steps = [st for st in _get(doc, path, "sweep", "steps") if "run" in st]
    passed = sorted((st for st in steps if st.get("passed")), key=lambda st: st["rate"])
    # the spread of each stage's time nearest to no load: the lowest rate that met the bound
    first = (passed or steps)[0]["run"]["stages"] if steps else []
    sizes = sorted((int(s["rows"]), float(s["ms_per_batch"]))
                   for s in _get(doc, path, "limit", "sizes"))
    return CpuFigures(
        source=Provenance(str(path), str(doc.get("created", "?")),
                          f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cpus "
                          f"({m.get('hostname', '?')})",
                          str(doc.get("command", "adstream bench"))),
        topology=topology, candidates=int(plan["candidates"]),
        chunk_rows=int(cfg.get("features.chunk_rows", 256)),
        max_batch_rows=int(cfg.get("scorer.max_batch_rows", 8192)),
        max_wait_ms=float(cfg.get("scorer.max_wait_ms", 2.0)),
        instances=int(cfg.get("scorer.instances", 1)),
        found_rate=float(p["rate"]), found_p99_ms=float(p["p99_ms"]),
        slo_p99_ms=float(plan["slo_p99_ms"]),
        cpu_ms={k: float(v) for k, v in cpu.items() if v is not None},
        cores={k: float(v) for k, v in p.get("cores", {}).items() if v is not None},
        machine_cpus=int(m.get("cpus_usable") or m.get("cpus") or 1),
        machine_cores_busy=p.get("machine_cores_busy"),
        model_ms=sizes, model_rows_per_s=float(_get(doc, path, "limit", "rows_per_s")),
        sigma={r: _sigma(first, r) for r in roles},
        wait_per_cpu={k: float(v) for k, v in (p.get("wait_per_cpu") or {}).items()
                      if v is not None},
        step_load=tuple(x for st in steps if (x := _step_load(st)) is not None),
        step_s=float(plan.get("step_s", 5.0)), partitions=int(plan.get("partitions", 4)),
        costs={n: c for n in cpu if n in (*roles, "broker", "load generator")
               and (c := _fit(steps, n, n == model)) is not None},
    )


@dataclass(frozen=True)
class GpuFigures:
    """One GPU's model time per batch (host↔device copies included) and its host's CPUs."""

    source: Provenance
    gpu: str
    host_cpus: int
    backend: str
    batch_ms: list[tuple[int, float, float]]  # (rows, p50 ms, p99 ms) per call
    worker_rows_per_s: float  # one scoring process through the in-process broker
    worker_chunk_rows: int

    def model_ms(self, rows: float) -> float:
        """The median time of a batch of ``rows``."""
        return interpolate([(r, p50) for r, p50, _ in self.batch_ms], rows)

    def model_p99_ms(self, rows: float) -> float:
        return interpolate([(r, p99) for r, _, p99 in self.batch_ms], rows)


def load_gpu(path: Path) -> GpuFigures:
    doc = _load(path, GPU_KIND)
    src = _get(doc, path, "source")
    return GpuFigures(
        source=Provenance(str(path), str(src.get("measured", "?")), str(src.get("machine", "?")),
                          f"transcribed from {src.get('log', '?')}: {src.get('command', '?')}"),
        gpu=str(_get(doc, path, "gpu")), host_cpus=int(_get(doc, path, "host_cpus")),
        backend=str(_get(doc, path, "backend")),
        batch_ms=[(int(r["rows"]), float(r["p50_ms"]), float(r["p99_ms"]))
                  for r in _get(doc, path, "batches")],
        worker_rows_per_s=float(_get(doc, path, "worker", "rows_per_s")),
        worker_chunk_rows=int(_get(doc, path, "worker", "chunk_rows")),
    )
