"""``adstream bench``: what the pipeline carries against what the hardware can do.

In one run, on one machine, it starts what it needs (a Kafka broker unless one answers, one
``adstream worker`` process per role, fresh topics) and measures:

1. **pipeline**: the highest offered rate of generated requests (``--candidates`` each)
   whose end-to-end p99 stays within ``--slo-p99-ms`` with no growing backlog (the load
   tester's sweep, open loop, Poisson arrivals);
2. **steady**: p50/p99 at ``--steady-fraction`` (60 %) of that rate, with the CPU time each
   process (broker, every role, the load generator) spent per request;
3. **overload** (``--overload-s``): ``--overload-factor`` (5×) that rate, then the steady
   rate again: every worker's resident memory against its steady value, the outcomes (every
   request must be answered ``ok`` or ``expired``), and how long p99 of ``ok`` answers
   takes to come back under the bound;
4. **limit**: raw onnxruntime rows/s for the model in this process, one thread, at the batch
   sizes the scorer formed at the found rate (after the workers stopped, so nothing competes).

It prints the ratio pipeline candidates/s ÷ raw rows/s, the batch-size histogram and the
CPU per request by stage, checks the targets, and writes everything as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import arrivals, run_environment
from loadtest.plans import BenchPlan, RunOptions
from loadtest.model_limit import RowHistogram, limit, parse_row_histogram
from loadtest.worker_processes import CpuMeter, WorkerSet, listening_pid, rss_bytes
from loadtest.replay import STATUSES
from loadtest.run import measure, replay_target, run_document
from loadtest.sweep import steps_table, sweep
from loadtest.pipeline_target import ensure_model, open_target
from loadtest.traffic import Traffic
from pipeline.config import amended
from workers.roles import topology
from workers.settings import Settings

BENCH_KIND = "adstream.bench"
BENCH_VERSION = 1
GENERATOR = "load generator"
BROKER = "broker"
# the batch-runtime issue's goals: the ratio by topology, the generator's CPU per request
TARGETS = {"ratio_fused": 0.7, "ratio_three_hops": 0.5, "steady_p99_ms": 20.0,
           "rss_growth": 1.5, "recovery_s": 10.0, "generator_ms": 0.1}


class BenchError(RuntimeError):
    """The benchmark could not run; the message says what to do."""


# ---- what the benchmark observes around a measurement ------------------------------------


@dataclass
class Probe:
    """CPU seconds of every process and the scorer's batch sizes around one measurement."""

    workers: WorkerSet
    pids: dict[str, int]  # every process measured (workers, broker, load generator)
    worker_pids: dict[str, int]  # whose memory is watched
    scorer_role: str
    _cpu: CpuMeter | None = None
    _hist: RowHistogram | None = None
    _rss: RssSampler | None = None

    async def _histogram(self) -> RowHistogram:
        text = await asyncio.to_thread(self.workers.by_role(self.scorer_role).metrics_text)
        return parse_row_histogram(text)

    async def begin(self) -> None:
        self._hist = await self._histogram()
        self._cpu = CpuMeter(self.pids)
        self._cpu.start()
        self._rss = RssSampler(self.worker_pids)
        self._rss.start()

    async def end(self) -> dict[str, Any]:
        assert self._cpu is not None and self._hist is not None and self._rss is not None
        cpu = self._cpu.stop()
        await self._rss.stop()
        hist = (await self._histogram()).minus(self._hist)
        return {"cpu_s": cpu, "machine_cores_busy": self._cpu.machine_cores_busy,
                "wait_per_cpu": dict(self._cpu.wait_per_cpu),
                "batch_rows": {"batches": hist.batches, "rows": hist.rows,
                                             "buckets": _json_buckets(hist)},
                "rss_peak_bytes": {n: self._rss.peak(n) for n in self.worker_pids},
                "_hist": hist}


def _json_buckets(hist: RowHistogram) -> list[dict[str, Any]]:
    return [{"lo": b["lo"], "hi": None if math.isinf(b["hi"]) else b["hi"],
             "batches": b["batches"]} for b in hist.buckets()]


class RssSampler:
    """Resident memory of each worker, sampled every ``interval_s`` while running."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.5) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, int]]] = {n: [] for n in pids}
        self._task: asyncio.Task[None] | None = None
        self.t0 = 0.0

    async def _run(self) -> None:
        while True:
            now = time.monotonic() - self.t0
            for name, pid in self.pids.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    self.samples[name].append((now, rss))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        self.start()
        try:
            yield self
        finally:
            await self.stop()

    def peak(self, name: str) -> int:
        return max((r for _, r in self.samples[name]), default=0)


# ---- the phases ---------------------------------------------------------------------------


def _cpu_per_request(cpu: dict[str, float | None], requests: int) -> dict[str, float | None]:
    if requests <= 0:
        return {}
    return {name: None if s is None else round(s * 1000 / requests, 4)
            for name, s in cpu.items() if name != "wall"}


def _cores(cpu: dict[str, float | None]) -> dict[str, float | None]:
    wall = cpu.get("wall") or 0.0
    return {name: None if s is None or not wall else round(s / wall, 3)
            for name, s in cpu.items() if name != "wall"}


async def _steady(settings: Settings, traffic: Traffic, plan: BenchPlan, rate: float,
                  probe: Probe, stop: asyncio.Event | None) -> dict[str, Any]:
    schedule = arrivals.plan(traffic.at_ms, rate=rate, arrival="poisson",
                             duration_s=plan.steady_s, seed=plan.seed + 1000)
    opts = RunOptions(warmup_s=min(plan.warmup_s, plan.steady_s / 4), timeout_s=10.0,
                      deadline_ms=plan.deadline_ms, slo_p99_ms=plan.slo_p99_ms,
                      batch_ms=plan.batch_ms)
    async with open_target(settings, with_workers=False, stop=stop) as target:
        await probe.begin()
        run = await measure(target, traffic, schedule, opts, stop=stop)
        probed = await probe.end()
    sent = run["summary"]["sent"]
    lat = run["latency_ms"]
    return {"rate": round(rate, 2), "requests": sent, "outcomes": run["summary"]["outcomes"],
            "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"],
            "max_ms": lat["max"], "achieved": run["summary"]["achieved_rate"],
            "stages": run["stages"], "cpu_s": probed["cpu_s"], "cores": _cores(probed["cpu_s"]),
            "cpu_ms_per_request": _cpu_per_request(probed["cpu_s"], sent),
            "machine_cores_busy": probed["machine_cores_busy"],
            "wait_per_cpu": probed["wait_per_cpu"],
            "batch_rows": probed["batch_rows"],
            "rss_bytes": probed["rss_peak_bytes"]}


def _overload_schedule(traffic: Traffic, plan: BenchPlan, found: float) -> arrivals.Schedule:
    hot = arrivals.plan(traffic.at_ms, rate=found * plan.overload_factor, arrival="poisson",
                        duration_s=plan.overload_s, seed=plan.seed + 2000)
    calm = arrivals.plan(traffic.at_ms, rate=found * plan.steady_fraction, arrival="poisson",
                         duration_s=plan.recovery_s, seed=plan.seed + 3000)
    return arrivals.Schedule(
        np.concatenate([hot.offsets_s, calm.offsets_s + plan.overload_s]),
        np.concatenate([hot.entries, calm.entries]),
        f"{hot.description} for {plan.overload_s:g} s, then {calm.description} for "
        f"{plan.recovery_s:g} s")


def recovery_time(offsets_s: np.ndarray, latency_ms: np.ndarray, ok: np.ndarray, *,
                  after_s: float, bound_ms: float, window_s: float,
                  sustain: int = 2) -> float | None:
    """Seconds after ``after_s`` until p99 of ``ok`` latencies (requests grouped by intended
    send time into ``window_s`` windows) is back within ``bound_ms`` for ``sustain``
    windows in a row; None when it never is."""
    end = float(offsets_s[-1]) if len(offsets_s) else after_s
    starts = np.arange(after_s, end, window_s)
    good = []
    for w in starts:
        sel = ok & (offsets_s >= w) & (offsets_s < w + window_s)
        x = latency_ms[sel]
        good.append(len(x) > 0 and float(np.percentile(x, 99)) <= bound_ms)
    for i in range(len(good) - sustain + 1):
        if all(good[i:i + sustain]):
            return round(float(starts[i] - after_s), 3)
    return None


async def _overload(settings: Settings, traffic: Traffic, plan: BenchPlan, found: float,
                    steady_rss: dict[str, int], pids: dict[str, int],
                    stop: asyncio.Event | None) -> dict[str, Any]:
    schedule = _overload_schedule(traffic, plan, found)
    # every request must be answered, however long the backlog takes to clear
    opts = RunOptions(warmup_s=0.0, timeout_s=plan.overload_s + plan.recovery_s + 60.0,
                      deadline_ms=plan.deadline_ms, batch_ms=plan.batch_ms)
    rss = RssSampler(pids)
    async with open_target(settings, with_workers=False, stop=stop) as target, rss.running():
        m, send_errors = await replay_target(target, traffic, schedule, opts, stop=stop)
    n = m.n_sent
    off, st = m.schedule.offsets_s[:n], m.status[:n]
    lat = m.latency_ms()[:n]
    outcomes = {s: int((st == i).sum()) for i, s in enumerate(STATUSES)}
    outcomes["lost"] = int((st < 0).sum()) + (len(m.schedule) - n)
    ok = st == STATUSES.index("ok")
    hot = off < plan.overload_s
    growth = {name: round(rss.peak(name) / steady_rss[name], 3) if steady_rss.get(name) else None
              for name in pids}
    rec = recovery_time(off, lat, ok, after_s=plan.overload_s, bound_ms=plan.slo_p99_ms,
                        window_s=plan.recovery_window_s)
    calm_ok = lat[ok & ~hot]
    doc = run_document(m, traffic, opts, send_errors)
    return {
        "offered_rate": round(found * plan.overload_factor, 2),
        "sent_rate": round(int(hot.sum()) / plan.overload_s, 2) if plan.overload_s else None,
        "overload_s": plan.overload_s, "recovery_s": plan.recovery_s, "requests": n,
        "outcomes": outcomes,
        "answered_ok_or_expired": outcomes["ok"] + outcomes["expired"] == len(m.schedule),
        "rss_peak_bytes": {name: rss.peak(name) for name in pids},
        "rss_steady_bytes": steady_rss, "rss_growth": growth,
        "recovered_after_s": rec,
        "ok_p99_ms_during": _p99(lat[ok & hot]),
        "ok_p99_ms_after_recovery": (_p99(lat[ok & (off >= plan.overload_s + rec)])
                                     if rec is not None else None),
        "ok_p99_ms_calm": _p99(calm_ok),
        "series": doc["series"],
    }


def _p99(x: np.ndarray) -> float | None:
    return round(float(np.percentile(x, 99)), 3) if len(x) else None


# ---- set-up: broker, topics, workers, traffic ------------------------------------------------


@dataclass
class Broker:
    bootstrap: str
    pid: int | None
    started: Any = None  # kafka_local.LocalBroker when this run started it

    async def stop(self) -> None:
        """Stop the broker if this run started it (one that already answered stays)."""
        if self.started is not None:
            from tools import kafka as kafka_local

            await asyncio.to_thread(kafka_local.stop_broker, self.started.data_dir)


async def broker_for(settings: Settings, tmp: Path) -> Broker:
    """The broker at the configured bootstrap when one answers, else one started here."""
    from tools import kafka as kafka_local

    url = settings.kafka.bootstrap
    if url.startswith("memory://"):
        raise BenchError(f"{url} is an in-process broker; the benchmark runs worker processes "
                         "and needs Kafka (leave --bootstrap out to start one)")
    from pipeline.kafka_clients import kafka_options

    if await kafka_local.broker_answers(url, timeout_s=3, opts=kafka_options(settings.kafka)):
        return Broker(url, _local_pid(url))
    print(f"no Kafka broker answers at {url}; starting one for the benchmark (the first start "
          "downloads Kafka from Maven Central, once) …", file=sys.stderr, flush=True)
    try:
        b = await asyncio.to_thread(kafka_local.start_broker, None, tmp / "kafka")
    except kafka_local.KafkaSetupError as e:
        raise BenchError(str(e)) from None
    return Broker(b.bootstrap, b.pid, b)


def _local_pid(bootstrap: str) -> int | None:
    """The pid of a broker listening on this machine at ``bootstrap`` (to read its CPU)."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1") or not port.isdigit():
        return None
    return listening_pid(int(port))


def bench_settings(settings: Settings, plan: BenchPlan, bootstrap: str) -> Settings:
    """``settings`` on fresh topics and groups of their own (nothing left from earlier runs)."""
    prefix = f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    topics: dict[str, object] = {name: f"{prefix}.{name}" for name in
                                 ("requests", "features", "scores", "results", "dlq", "changelog")}
    return amended(settings, kafka={"bootstrap": bootstrap, "group_prefix": prefix},
                   topics={**topics, "partitions": plan.partitions})


def make_traffic(plan: BenchPlan, path: Path) -> Traffic:
    from loadtest.generate import generate, write_jsonl

    write_jsonl(path, generate(plan.requests, seed=plan.seed,
                               candidates=f"fixed:{plan.candidates}",
                               timeout_ms=plan.deadline_ms))
    return Traffic.load(path)


# ---- the run ----------------------------------------------------------------------------------


async def bench(settings: Settings, plan: BenchPlan, *, progress_mode: str = "auto", stop: asyncio.Event | None = None,
                keep_dir: Path | None = None) -> dict[str, Any]:
    from pipeline.config import to_toml
    from workers.roles import ensure_topics, transport_for
    from workers.scoring.repository import load_model

    tmp = Path(tempfile.mkdtemp(prefix="adstream-bench-", dir=keep_dir))
    broker = await broker_for(settings, tmp)
    workers: WorkerSet | None = None
    try:
        s = bench_settings(settings, plan, broker.bootstrap)
        ensure_model(s)
        spec = load_model(Path(s.scorer.model_repo), s.scorer.model, s.scorer.version or None)
        max_rows = s.scorer.max_batch_rows or spec.config.max_batch_rows
        print(f"generating {plan.requests} requests with {plan.candidates} candidates …",
              file=sys.stderr, flush=True)
        traffic = await asyncio.to_thread(make_traffic, plan, tmp / "traffic.jsonl")
        transport = transport_for(s)
        try:
            await ensure_topics(s, transport)
        finally:
            await transport.close()
        config = tmp / "adstream.toml"
        config.touch(mode=0o600)  # it may hold the Kafka password
        config.write_text(to_toml(s))
        workers = WorkerSet(config, tmp)
        print(f"starting workers: {', '.join(plan.roles)} …", file=sys.stderr, flush=True)
        await asyncio.to_thread(workers.start, plan.roles)
        pids = {w.role: w.pid for w in workers.workers}
        worker_pids = dict(pids)
        if broker.pid is not None:
            pids[BROKER] = broker.pid
        pids[GENERATOR] = os.getpid()
        probe = Probe(workers, pids, worker_pids, topology(plan.fused).scoring_role)

        opts = RunOptions(warmup_s=plan.warmup_s, timeout_s=10.0, deadline_ms=plan.deadline_ms,
                          slo_p99_ms=plan.slo_p99_ms, batch_ms=plan.batch_ms)
        if plan.warm_s > 0:  # first batches, JIT of the broker, connections: not measured
            print(f"warming up for {plan.warm_s:g} s …", file=sys.stderr, flush=True)
            async with open_target(s, with_workers=False, stop=stop) as target:
                await measure(target, traffic, arrivals.plan(
                    traffic.at_ms, rate=plan.start_rate, arrival="poisson",
                    duration_s=plan.warm_s, seed=plan.seed + 4000), opts, stop=stop)
        sweep_doc = await sweep(s, traffic, plan.sweep_plan(), opts, with_workers=False,
                                progress_mode=progress_mode, stop=stop, probe=probe)
        _check_alive(workers)
        best = sweep_doc["best"]
        if best is None:
            raise BenchError("no offered rate met the p99 bound; the sweep:\n"
                             + steps_table(sweep_doc))
        best_step = sweep_doc["steps"][best["step"]]
        found = float(best["rate"])
        hist: RowHistogram = best_step["probe"].pop("_hist")
        for st in sweep_doc["steps"]:
            st.get("probe", {}).pop("_hist", None)
            if "probe" in st:
                st["probe"]["cpu_ms_per_request"] = _cpu_per_request(
                    st["probe"]["cpu_s"], st["run"]["summary"]["sent"])

        print(f"steady state at {plan.steady_fraction:.0%} of {found:,.0f}/s …",
              file=sys.stderr, flush=True)
        steady = await _steady(s, traffic, plan, found * plan.steady_fraction, probe, stop)
        # steady-state memory: the peak while the pipeline met its bound (passing sweep steps
        # and the steady phase), what the overload is compared with
        steady_rss = {n: max([steady["rss_bytes"][n]] + [
            st["probe"]["rss_peak_bytes"][n] for st in sweep_doc["steps"]
            if st["passed"] and "probe" in st]) for n in worker_pids}
        _check_alive(workers)

        overload = None
        if plan.overload_s > 0:
            print(f"overload: {plan.overload_factor:g}× = "
                  f"{found * plan.overload_factor:,.0f}/s for {plan.overload_s:g} s, then "
                  f"{found * plan.steady_fraction:,.0f}/s for {plan.recovery_s:g} s …",
                  file=sys.stderr, flush=True)
            overload = await _overload(s, traffic, plan, found, steady_rss, worker_pids, stop)
            _check_alive(workers)
        await asyncio.to_thread(workers.stop)
        workers = None

        print("timing the model alone at the formed batch sizes …", file=sys.stderr, flush=True)
        lim = await asyncio.to_thread(limit, spec, hist, max_rows, seconds_per_size=plan.limit_s)
        summary = best_step["run"]["summary"]
        cands_per_s = summary["candidates_scored_per_s"] or found * plan.candidates
        pipeline = {"rate": found, "p99_ms": best["p99_ms"],
                    "p50_ms": best_step["p50_ms"], "achieved": best_step["achieved"],
                    "candidates_per_s": cands_per_s,
                    "cpu_s": best_step["probe"]["cpu_s"],
                    "cores": _cores(best_step["probe"]["cpu_s"]),
                    "cpu_ms_per_request": best_step["probe"]["cpu_ms_per_request"],
                    "machine_cores_busy": best_step["probe"]["machine_cores_busy"],
                    "wait_per_cpu": best_step["probe"]["wait_per_cpu"],
                    "batch_rows": best_step["probe"]["batch_rows"]}
        ratio = cands_per_s / float(lim["rows_per_s"])
        for st in sweep_doc["steps"]:
            st["run"].pop("samples", None)
        doc: dict[str, Any] = {
            "kind": BENCH_KIND, "version": BENCH_VERSION,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "plan": asdict(plan), "topology": topology(plan.fused).name,
            "broker": {"bootstrap": broker.bootstrap, "started": broker.started is not None,
                       "pid_measured": broker.pid is not None},
            "limit": lim, "pipeline": pipeline, "ratio": float(f"{ratio:.4g}"),
            "steady": steady, "overload": overload,
            "machine": run_environment.machine(), "software": run_environment.software(),
            "config": run_environment.pipeline_config(s, with_workers=False,
                                                  partitions=plan.partitions),
            "sweep": {k: v for k, v in sweep_doc.items()
                      if k not in ("machine", "software", "config")},
        }
        doc["targets"] = targets(doc)
        return doc
    finally:
        if workers is not None:
            await asyncio.to_thread(workers.stop)
        await broker.stop()
        if keep_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_alive(workers: WorkerSet) -> None:
    dead = workers.dead()
    if dead:
        logs = "\n".join(f"--- {w.role}\n{w.log_tail(1500)}" for w in workers.workers)
        raise BenchError(f"worker process(es) exited during the benchmark: {', '.join(dead)}\n"
                         + logs)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the throughput issue with the measured value and whether it is met."""
    ratio = TARGETS["ratio_fused" if doc["plan"]["fused"] else "ratio_three_hops"]
    generator = doc["pipeline"]["cpu_ms_per_request"].get(GENERATOR)
    out = [
        {"target": f"ratio ≥ {ratio:g}", "value": doc["ratio"], "met": doc["ratio"] >= ratio},
        {"target": f"load generator ≤ {TARGETS['generator_ms']:g} ms CPU per request",
         "value": generator,
         "met": generator is not None and generator <= TARGETS["generator_ms"]},
        {"target": f"p99 ≤ {TARGETS['steady_p99_ms']:g} ms at "
                   f"{doc['plan']['steady_fraction']:.0%} of the found rate",
         "value": doc["steady"]["p99_ms"],
         "met": doc["steady"]["p99_ms"] is not None
         and doc["steady"]["p99_ms"] <= TARGETS["steady_p99_ms"]},
    ]
    ov = doc.get("overload")
    if ov is not None:
        growth = [g for g in ov["rss_growth"].values() if g is not None]
        out += [
            {"target": f"RSS ≤ {TARGETS['rss_growth']:g}× steady under overload",
             "value": max(growth, default=None),
             "met": bool(growth) and max(growth) <= TARGETS["rss_growth"]},
            {"target": "every request answered ok or expired",
             "value": {k: v for k, v in ov["outcomes"].items() if v},
             "met": ov["answered_ok_or_expired"]},
            {"target": f"p99 of ok ≤ {doc['plan']['slo_p99_ms']:g} ms within "
                       f"{TARGETS['recovery_s']:g} s after the overload",
             "value": ov["recovered_after_s"],
             "met": ov["recovered_after_s"] is not None
             and ov["recovered_after_s"] <= TARGETS["recovery_s"]},
        ]
    return out


# ---- printing ---------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


def _histogram_lines(batch_rows: dict[str, Any]) -> Iterator[str]:
    buckets = batch_rows["buckets"]
    total = max(1, sum(b["batches"] for b in buckets))
    for b in buckets:
        hi = "∞" if b["hi"] is None else f"{b['hi']:g}"
        share = b["batches"] / total
        yield (f"    {b['lo']:>6g} < rows ≤ {hi:<6} {b['batches']:>7}  {share:6.1%} "
               f"{'█' * max(1, round(share * 40))}")


def _cpu_lines(per_request: dict[str, float | None], cores: dict[str, float | None]
               ) -> Iterator[str]:
    total = sum(v for v in per_request.values() if v is not None)
    for name, v in per_request.items():
        yield (f"    {name:<15} {_fmt(v, ' ms', 3):>11}   {_fmt(cores.get(name), ' cores', 2)}")
    yield f"    {'total':<15} {total:>8.3f} ms"


def report_text(doc: dict[str, Any]) -> str:
    p, lim, st = doc["pipeline"], doc["limit"], doc["steady"]
    plan = doc["plan"]
    m = doc["machine"]
    lines = [
        (f"adstream bench — {doc['topology']}, {plan['candidates']} candidates/request, "
         f"{plan['partitions']} partitions, p99 bound {plan['slo_p99_ms']:g} ms"),
        (f"  machine   {m.get('cpu', '?')}, "
         f"{m.get('cpus', '?')} cpus, {m.get('memory_gib', '?')} GiB "
         f"(broker, workers and load generator all on it)"),
        "",
        (f"limit     raw onnxruntime, 1 thread, at the formed batch sizes: "
         f"{lim['rows_per_s']:,.0f} rows/s"),
    ]
    for sz in lim["sizes"]:
        lines.append(f"    {sz['rows']:>6} rows × {sz['batches']:>6} batches  "
                     f"{sz['ms_per_batch']:.3f} ms/batch  {sz['rows_per_s']:,.0f} rows/s")
    lines += [
        (f"pipeline  {p['rate']:,.0f} requests/s at p99 {_fmt(p['p99_ms'], ' ms')} "
         f"(p50 {_fmt(p['p50_ms'], ' ms')}) = {p['candidates_per_s']:,.0f} candidates/s"),
        f"ratio     pipeline candidates/s ÷ raw rows/s = {doc['ratio']:.3f}",
        "",
        (f"batch sizes at {p['rate']:,.0f}/s ({p['batch_rows']['batches']} batches, mean "
         f"{p['batch_rows']['rows'] / max(1, p['batch_rows']['batches']):.0f} rows):"),
        *_histogram_lines(p["batch_rows"]),
        f"CPU per request at {p['rate']:,.0f}/s (and cores busy):",
        *_cpu_lines(p["cpu_ms_per_request"], p["cores"]),
        (f"    machine busy    {_fmt(p.get('machine_cores_busy'), ' cores', 2)} of "
         f"{m.get('cpus', '?')} (every process on it, other work included)"),
        ("    waiting for a core, s per CPU s: " + ", ".join(
            f"{n} {_fmt(v, '', 2)}" for n, v in p.get("wait_per_cpu", {}).items())),
        "",
        (f"steady    {st['rate']:,.0f} requests/s ({plan['steady_fraction']:.0%}): "
         f"p50 {_fmt(st['p50_ms'], ' ms')}  p99 {_fmt(st['p99_ms'], ' ms')}  "
         f"p99.9 {_fmt(st['p99.9_ms'], ' ms')}"),
        "  where the time goes, p50 / p99 ms: " + " | ".join(
            f"{x['name']} {_fmt(x.get('p50'))} / {_fmt(x.get('p99'))}"
            for x in st["stages"] if x.get("count")),
        "  CPU per request:",
        *_cpu_lines(st["cpu_ms_per_request"], st["cores"]),
    ]
    ov = doc.get("overload")
    if ov is not None:
        outcomes = ", ".join(f"{k}={v}" for k, v in ov["outcomes"].items() if v)
        lines += [
            "",
            (f"overload  {ov['offered_rate']:,.0f}/s offered for {ov['overload_s']:g} s "
             f"(sent {_fmt(ov['sent_rate'], '/s', 0)}), then {st['rate']:,.0f}/s: {outcomes}"),
            "  RSS peak / steady: " + ", ".join(
                f"{n} {_fmt(g, '×', 2)} ({ov['rss_peak_bytes'][n] / 2**20:.0f} MiB)"
                for n, g in ov["rss_growth"].items()),
            (f"  p99 of ok during the overload {_fmt(ov['ok_p99_ms_during'], ' ms')}; back "
             f"under {plan['slo_p99_ms']:g} ms {_fmt(ov['recovered_after_s'], ' s')} after it "
             f"stopped"),
        ]
    lines += ["", "targets:"]
    for t in doc["targets"]:
        v = t["value"]
        vs = f"{v:g}" if isinstance(v, float) else str(v)
        lines.append(f"  {'met ' if t['met'] else 'MISSED'}  {t['target']}: {vs}")
    return "\n".join(lines)
