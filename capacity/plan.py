"""The capacity model: measured figures in, replicas per role, partitions per topic, broker
throughput and the headroom assumed out.

Each worker process is taken as one replica on ``cores_per_replica`` cores that serves its
requests one after another (an asyncio event loop, the model thread beside it): its CPU per
request is the bench's, outside the model scaled with candidates beyond the bench's (never
below it: the per-message part does not shrink), plus the model's time for a batch of one
request (no batching gain assumed). The highest utilization that keeps an estimate of p99
within the bound is chosen: per stage the service time (lognormal, spread from the bench) and
an M/G/c waiting time (mean and p99) over the stages (the stages' worst cases
do not coincide: combined as the means plus the root of the summed squared excesses of
each p99 over its mean), plus the batcher's window, the broker passes and the network hops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from capacity.figures import Z99, CpuFigures, GpuFigures
from capacity.wire import topic_bytes

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Assumptions:
    """What the model assumes rather than measures (each one a flag of ``adstream plan``)."""

    peak_factor: float = 2.0  # the busiest hour's rate ÷ the day's mean
    max_utilization: float = 0.7  # of a replica's cores, at the peak: bursts and a lost zone
    cores_per_replica: float = 1.0
    broker_cores: int = 8
    replication: int = 3  # the topics' replication factor (the bench ran with 1)
    hop_ms: float = 0.5  # one network hop between two hosts
    partitions_per_replica: int = 2  # room to double a role's consumers without repartitioning
    partition_mb_s: float = 10.0  # bytes per second one partition is asked to carry
    # what one broker's network carries each way at most, MB/s (a 10 Gbit/s link is 1,250)
    broker_mb_s: float = 1000.0
    gpu_max_utilization: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (self.peak_factor >= 1, "--peak-factor must be ≥ 1"),
            (0 < self.max_utilization < 1, "--max-utilization must be in (0, 1)"),
            (self.cores_per_replica > 0, "--cores-per-replica must be > 0"),
            (self.broker_cores >= 1, "--broker-cores must be ≥ 1"),
            (self.replication >= 1, "--replication must be ≥ 1"),
            (self.hop_ms >= 0, "--hop-ms must be ≥ 0"),
            (self.partitions_per_replica >= 1, "--partitions-per-replica must be ≥ 1"),
            (self.partition_mb_s > 0, "--partition-mb-s must be > 0"),
            (self.broker_mb_s > 0, "--broker-mb-s must be > 0"),
            (0 < self.gpu_max_utilization <= 1, "--gpu-max-utilization must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Role:
    name: str
    replicas: int
    ms_per_request: float  # CPU of one replica per request at the plan's candidates
    sigma: float  # lognormal shape of its service time
    utilization: float  # of its cores at the peak rate
    p99_ms: float  # estimated: service p99 + waiting p99
    per_batch_ms: float = 0.0  # of ms_per_request: the cost of its batch (one request each)
    model_ms: float = 0.0  # of ms_per_request: the model on this replica's CPU
    gpus: int = 0
    gpu_ms_per_request: float = 0.0
    replicas_per_gpu: int = 0


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    consumers: str  # the role (or the clients) that reads it
    bytes_per_request: int
    mb_per_s: float


@dataclass(frozen=True)
class Plan:
    requests_per_day: float
    candidates: int
    p99_ms: float
    gpu: bool
    mean_rate: float
    peak_rate: float
    topology: str
    roles: list[Role]
    topics: list[Topic]
    brokers: int
    broker_cores_needed: float
    broker_ms_per_request: float
    broker_in_mb_s: float  # produced by clients and workers
    broker_replication_mb_s: float  # follower fetches
    broker_out_mb_s: float  # consumer fetches
    estimated_p99_ms: float
    utilization_target: float
    assumptions: Assumptions
    figures: list[str]  # the files used, with when and where they were measured
    notes: list[str] = field(default_factory=list)

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "adstream.capacity.plan"
        return d


class PlanError(ValueError):
    """No configuration meets the bound; the message says why."""


def service_p99(mean_ms: float, sigma: float) -> float:
    return mean_ms * math.exp(Z99 * sigma - sigma ** 2 / 2)


def erlang_c(servers: int, rho: float) -> float:
    """The probability that an arrival waits in an M/M/c queue at utilization ``rho``."""
    a = servers * rho
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= a / k
        total += term
    last = term * a / servers / (1 - rho)
    return last / (total + last)


def wait_mean(rho: float, mean_ms: float, sigma: float, servers: int = 1) -> float:
    """The mean wait in an M/G/c queue (Erlang's C, Allen–Cunneen's spread factor)."""
    if rho >= 1:
        return math.inf
    if rho <= 0:
        return 0.0
    cv2 = math.exp(sigma ** 2) - 1
    return erlang_c(servers, rho) * mean_ms / (servers * (1 - rho)) * (1 + cv2) / 2


def wait_p99(rho: float, mean_ms: float, sigma: float, servers: int = 1) -> float:
    """p99 of the wait in an M/G/c queue: the M/M/c tail P(W > t) = C·exp(−c(1−ρ)t/S)
    (C: Erlang's C) with its scale stretched by (1 + cv²)/2 for the service spread
    (Allen–Cunneen)."""
    if rho >= 1:
        return math.inf
    if rho <= 0:
        return 0.0
    c = erlang_c(servers, rho)
    if c <= 0.01:
        return 0.0
    cv2 = math.exp(sigma ** 2) - 1
    return math.log(100 * c) * mean_ms / (servers * (1 - rho)) * (1 + cv2) / 2


def broker_passes(topology: str) -> int:
    return 2 if topology == "fused" else 4  # records a request puts through a broker


def _topic_plan(topology: str, replicas: dict[str, int], bytes_: dict[str, int], rate: float,
                a: Assumptions) -> list[Topic]:
    first = "fused" if topology == "fused" else "features"
    readers = {"requests": first, "results": "clients"}
    if topology != "fused":
        readers.update(features="scorer", scores="aggregator")
    out = []
    for name, reader in readers.items():
        mb_s = bytes_[name] * rate / 1e6
        n = replicas.get(reader, replicas[first])  # clients: as many as the requests' readers
        p = max(n * a.partitions_per_replica, math.ceil(mb_s / a.partition_mb_s))
        p = math.ceil(p / n) * n  # a multiple of the consumers: every one carries the same
        out.append(Topic(f"ads.{name}", p, reader, bytes_[name], round(mb_s, 1)))
    return out


def make_plan(cpu: CpuFigures, *, requests_per_day: float, candidates: int, p99_ms: float,
              gpu: GpuFigures | None = None, assumptions: Assumptions | None = None) -> Plan:
    a = assumptions or Assumptions()
    if requests_per_day <= 0 or candidates < 1 or p99_ms <= 0:
        raise PlanError("--requests-per-day and --p99-ms must be > 0, --candidates ≥ 1")
    mean_rate = requests_per_day / SECONDS_PER_DAY
    peak = mean_rate * a.peak_factor
    scale = max(1.0, candidates / cpu.candidates)
    slowdown = cpu.slowdown
    model_role = cpu.model_role
    demand: dict[str, float] = {}
    per_batch: dict[str, float] = {}
    model_cpu: dict[str, float] = {}
    for r in cpu.roles:
        # at worst every request is a batch of its own (light load): its per-batch cost too
        per_batch[r] = cpu.cost(r).per_batch_ms
        model_cpu[r] = (cpu.batch_ms(candidates) / slowdown  # one request's batch, 1 thread
                        if r == model_role and gpu is None else 0.0)
        demand[r] = cpu.loop_ms(r) * scale + per_batch[r] + model_cpu[r]
    gpu_ms = gpu.model_ms(candidates) if gpu is not None else 0.0
    bytes_c = topic_bytes(candidates, cpu.chunk_rows)
    bytes_b = topic_bytes(cpu.candidates, cpu.chunk_rows)
    passes = broker_passes(cpu.topology)
    used = [k for k in (("requests", "results") if cpu.topology == "fused"
                        else ("requests", "features", "scores", "results"))]
    byte_scale = max(1.0, sum(bytes_c[k] for k in used) / sum(bytes_b[k] for k in used))
    broker_ms = cpu.cost("broker").per_request_ms * byte_scale  # per request, leaders only
    pass_ms = broker_ms / passes
    broker_cores = peak * broker_ms * a.replication / 1000
    brokers = max(a.replication,
                  math.ceil(broker_cores / (a.broker_cores * a.max_utilization)))
    broker_rho = broker_cores / (brokers * a.broker_cores)
    # fixed delays: the network hops (to and from the broker for every record), acks=all's
    # follower fetch per record, the batcher's window (and the GPU's batch time)
    fixed = (2 * passes * a.hop_ms + passes * (2 * a.hop_ms if a.replication > 1 else 0.0)
             + cpu.max_wait_ms)
    broker_parts = passes * [
        (pass_ms + wait_mean(broker_rho, pass_ms, 0.5, a.broker_cores),
         service_p99(pass_ms, 0.5) + wait_p99(broker_rho, pass_ms, 0.5, a.broker_cores))]
    if gpu is not None:  # the batch on a GPU shared up to gpu_max_utilization
        gpu_p99 = max(gpu_ms, gpu.model_p99_ms(candidates))
        g_sig = math.log(gpu_p99 / gpu_ms) / Z99 if gpu_ms else 0.0
        u = a.gpu_max_utilization
        broker_parts.append((gpu_ms + wait_mean(u, gpu_ms, g_sig),
                             gpu_p99 + wait_p99(u, gpu_ms, g_sig)))

    def estimate(rho_target: float) -> tuple[float, list[Role]]:
        """p99 end to end: the stages' means plus the root of the sum of their squared
        p99 excesses (the tails of independent servers do not add up linearly)."""
        roles, parts = [], list(broker_parts)
        for r in cpu.roles:
            n = max(1, math.ceil(peak * demand[r] / 1000 / (rho_target * a.cores_per_replica)))
            rho = peak / n * demand[r] / 1000 / a.cores_per_replica
            service = demand[r] / min(1.0, a.cores_per_replica)
            sig = cpu.sigma.get(r, 0.5)
            role_parts = [(service, service_p99(service, sig)),
                          (wait_mean(rho, service, sig), wait_p99(rho, service, sig))]
            parts += role_parts
            own = (sum(m for m, _ in role_parts)
                   + math.sqrt(sum(max(0.0, p - m) ** 2 for m, p in role_parts)))
            roles.append(Role(r, n, round(demand[r], 3), sig, round(rho, 3), round(own, 2),
                              per_batch_ms=round(per_batch[r], 3),
                              model_ms=round(model_cpu[r], 3)))
        total = (fixed + sum(m for m, _ in parts)
                 + math.sqrt(sum(max(0.0, p - m) ** 2 for m, p in parts)))
        return total, roles

    # the highest utilization (in steps of 5 %, then 1 % below 5 %) meeting the bound
    grid = [round(a.max_utilization - 0.05 * i, 2)
            for i in range(int(a.max_utilization / 0.05 + 1e-9))]
    grid = [g for g in grid if g >= 0.05] + [0.04, 0.03, 0.02, 0.01]
    for rho in grid:
        total, roles = estimate(rho)
        if total <= p99_ms:
            break
    else:
        free, _ = estimate(1e-6)
        raise PlanError(f"p99 ≤ {p99_ms:g} ms cannot be met with these figures: even at 1 % "
                        f"busy the estimate is {total:.1f} ms ({free:.1f} ms for one request "
                        "alone, with no queueing)")
    notes = []
    if gpu is not None:
        out = []
        for role in roles:
            if role.name != model_role:
                out.append(role)
                continue
            per_replica = peak / role.replicas * gpu_ms / 1000  # GPU busy fraction
            by_gpu = max(1, math.floor(a.gpu_max_utilization / per_replica)) if per_replica else 1
            per_gpu = max(1, min(gpu.host_cpus - 1, by_gpu))
            out.append(Role(role.name, role.replicas, role.ms_per_request, role.sigma,
                            role.utilization, role.p99_ms, per_batch_ms=role.per_batch_ms,
                            gpus=math.ceil(role.replicas / per_gpu),
                            gpu_ms_per_request=round(gpu_ms, 3), replicas_per_gpu=per_gpu))
            notes.append(
                f"{role.name} on {gpu.gpu}: the model's {gpu_ms:.3f} ms per request moves to "
                f"the GPU; the rest of the replica's work ({role.ms_per_request:.2f} ms CPU) "
                f"stays on its core; {per_gpu} replicas per "
                f"GPU (its host's {gpu.host_cpus} cores less one, GPU ≤ "
                f"{a.gpu_max_utilization:.0%} busy)")
        roles = out
    replicas = {r.name: r.replicas for r in roles}
    topics = _topic_plan(cpu.topology, replicas, bytes_c, peak, a)
    in_mb = sum(t.mb_per_s for t in topics)
    # each way, a broker carries its share of the produced bytes and of their copies to and
    # from followers (in: produce + replication received; out: consumers + replication sent)
    by_network = math.ceil(in_mb * a.replication / (a.broker_mb_s * a.max_utilization))
    if by_network > brokers:
        notes.append(f"brokers set by the network, not their CPU ({brokers} would do): "
                     f"{in_mb * a.replication:,.0f} MB/s each way in all, ≤ "
                     f"{a.broker_mb_s:g} MB/s per broker at ≤ {a.max_utilization:.0%}")
        brokers = by_network
    figures = [f"CPU: {cpu.source.line()}"]
    if gpu is not None:
        figures.append(f"GPU: {gpu.source.line()}")
    if scale > 1:
        notes.append(f"CPU outside the model scaled × {scale:.2f} from the bench's "
                     f"{cpu.candidates} candidates to {candidates}")
    bc = cpu.cost("broker")
    notes.append(f"CPU per request fitted over the bench's sweep steps (per request + per "
                 f"batch, or + idle cores): broker {bc.per_request_ms:.2f} ms per request "
                 f"(its idle {bc.idle_cores:.2f} cores left out), "
                 + ", ".join(f"{r} {cpu.cost(r).per_request_ms:.2f} ms + "
                             f"{cpu.cost(r).per_batch_ms:.2f} ms per batch"
                             for r in cpu.roles))
    if slowdown > 1.05:
        notes.append(f"the model's timing on the bench machine divided by {slowdown:.2f}: "
                     f"other work kept {cpu.background:.1f} threads runnable on its "
                     f"{cpu.machine_cpus} cores")
    return Plan(
        requests_per_day=requests_per_day, candidates=candidates, p99_ms=p99_ms,
        gpu=gpu is not None, mean_rate=round(mean_rate, 1), peak_rate=round(peak, 1),
        topology=cpu.topology, roles=roles, topics=topics, brokers=brokers,
        broker_cores_needed=round(broker_cores, 1), broker_ms_per_request=round(broker_ms, 3),
        broker_in_mb_s=round(in_mb, 1),
        broker_replication_mb_s=round(in_mb * (a.replication - 1), 1),
        broker_out_mb_s=round(in_mb, 1), estimated_p99_ms=round(total, 1),
        utilization_target=rho, assumptions=a, figures=figures, notes=notes)


def report_text(plan: Plan) -> str:
    a = plan.assumptions
    lines = [
        (f"adstream plan — {plan.requests_per_day:,.0f} requests/day at {plan.candidates} "
         f"candidates, p99 ≤ {plan.p99_ms:g} ms, {plan.topology}"
         f"{' with GPUs' if plan.gpu else ', CPU only'}"),
        (f"  rate      {plan.mean_rate:,.0f}/s mean, {plan.peak_rate:,.0f}/s at the peak "
         f"(× {a.peak_factor:g})"),
        "  measured figures used:",
        *(f"    {f}" for f in plan.figures),
        "",
        f"  {'role':<12} {'replicas':>9} {'CPU ms/req':>11} {'busy':>6} {'p99 est.':>9}  GPUs",
    ]
    for r in plan.roles:
        g = (f"{r.gpus} ({r.replicas_per_gpu} replicas each, {r.gpu_ms_per_request:.3f} ms "
             f"GPU/req)") if r.gpus else "–"
        lines.append(f"  {r.name:<12} {r.replicas:>9,} {r.ms_per_request:>11.2f} "
                     f"{r.utilization:>6.0%} {r.p99_ms:>7.1f} ms  {g}")
    lines += ["", (f"  {'topic':<14} {'partitions':>10}  {'read by':<11} {'bytes/req':>9} "
                  f"{'MB/s':>9}")]
    for t in plan.topics:
        lines.append(f"  {t.name:<14} {t.partitions:>10,}  {t.consumers:<11} "
                     f"{t.bytes_per_request:>9,} {t.mb_per_s:>9,.1f}")
    lines += [
        "",
        (f"  brokers   {plan.brokers:,} × {a.broker_cores} cores ({plan.broker_cores_needed:,.0f} "
         f"cores busy: {plan.broker_ms_per_request:.2f} ms CPU per request × replication "
         f"{a.replication})"),
        (f"            in {plan.broker_in_mb_s:,.0f} MB/s, replication "
         f"{plan.broker_replication_mb_s:,.0f} MB/s, out to consumers "
         f"{plan.broker_out_mb_s:,.0f} MB/s"),
        (f"  headroom  replicas at ≤ {plan.utilization_target:.0%} busy at the peak "
         f"(cap {a.max_utilization:.0%}); peak = {a.peak_factor:g}× the day's mean; "
         f"{a.partitions_per_replica} partitions per consumer"),
        (f"  p99       estimated {plan.estimated_p99_ms:.1f} ms (stages' means + the root of "
         f"their squared p99 excesses; {a.hop_ms:g} ms per network hop)"),
        (f"  assumed   {a.cores_per_replica:g} core per replica, brokers of {a.broker_cores} "
         f"cores and ≤ {a.broker_mb_s:g} MB/s each way, ≤ {a.partition_mb_s:g} MB/s per "
         f"partition; bytes/request from the "
         f"encoders (+70 B per record)"),
    ]
    lines += [f"  note      {n}" for n in plan.notes]
    return "\n".join(lines)
