"""The pipeline as simulation routes: the bench on its one machine, and a planned fleet.

A request's route follows the topology: (load generator →) broker → features … → broker
(→ load generator). Each worker is one FIFO server (its event loop) with the model's
batcher beside it; its CPU per request is split evenly before and after the batch (decode
and features before, top-K, encoding and sending after: not measured apart). Broker work is
split evenly over the records a request puts through it.

A fleet is simulated by symmetry: one replica of each role with its share of the peak rate
(the most loaded one: ``ceil(P/N)/P`` of it when P partitions do not divide evenly over N
replicas), the tagged requests passing through all of them and Poisson traffic of the rest
of the fleet added where a role's share is larger than the tagged stream's; the broker's
other traffic is a steady load on its cores.
"""

from __future__ import annotations

import math

from capacity.figures import CpuFigures, GpuFigures
from capacity.plan import Plan, broker_passes
from capacity.simulate import Batch, Batcher, Delay, Machine, Server, Step, Stream, Visit, Work


def _loop_visits(server: Server, ms: float, sigma: float) -> tuple[Visit, Visit]:
    w = Work(ms / 2000, "lognormal", sigma)
    return Visit(server, w), Visit(server, w)


def _half_batch(ms: float, sigma: float) -> Work | None:
    """Half a batch's cost (the batch actor wakes before and after the model)."""
    return Work(ms / 2000, "lognormal", sigma) if ms > 0 else None


BENCH_MACHINE = "bench machine"


def bench_streams(cpu: CpuFigures, rate: float,
                  other: float | tuple[float, ...] = ()) -> list[Stream]:
    """The bench's processes on its machine, with ``other`` work beside them (runnable
    threads: one count, or one per sweep step in turn)."""
    idle = sum(cpu.cost(n).idle_cores for n in cpu.cpu_ms if n in cpu.costs)
    vm = (Machine(BENCH_MACHINE, cpu.machine_cpus, idle, levels=other, period_s=cpu.step_s)
          if isinstance(other, tuple) else Machine(BENCH_MACHINE, cpu.machine_cpus, idle + other))
    gen = Server("load generator", vm)
    broker = Server("broker", vm, threads=8)
    passes = broker_passes(cpu.topology)
    g = Visit(gen, Work(cpu.cost("load generator").per_request_ms / 2000, "exp")
              if "load generator" in cpu.cpu_ms else Work(0.0))
    b = Visit(broker, Work(cpu.cost("broker").per_request_ms / passes / 1000, "exp"))
    slowdown = cpu.slowdown
    batcher = Batcher("model", vm, cpu.max_batch_rows, cpu.max_wait_ms / 1000,
                      lambda rows: cpu.batch_ms(rows) / slowdown / 1000, cpu.instances)
    route: list[Step] = [g, b]
    for role in cpu.roles:
        sig = cpu.sigma.get(role, 0.5)
        s = Server(role, vm, per_batch=_half_batch(cpu.cost(role).per_batch_ms, sig))
        pre, post = _loop_visits(s, cpu.loop_ms(role), sig)
        route += [pre, Batch(batcher), post] if role == cpu.model_role else [pre, post]
        route.append(b)
    route.append(g)
    return [Stream(rate, tuple(route), rows=cpu.candidates, partitions=cpu.partitions)]


def _share(peak: float, replicas: int, partitions: int) -> float:
    """The most loaded replica's rate: it owns ceil(P/N) of the P partitions."""
    return peak * math.ceil(partitions / replicas) / partitions


def plan_streams(plan: Plan, cpu: CpuFigures, gpu: GpuFigures | None = None,
                 rate: float | None = None) -> list[Stream]:
    """The planned fleet at ``rate`` (default: the plan's peak), one replica per role."""
    a = plan.assumptions
    peak = plan.peak_rate if rate is None else rate
    topics = {t.consumers: t for t in plan.topics}
    shares = {r.name: _share(peak, r.replicas, topics[r.name].partitions) for r in plan.roles}
    tagged = min(shares.values())
    passes = broker_passes(plan.topology)
    pass_s = plan.broker_ms_per_request / passes / 1000
    # the rest of the fleet's records through this broker (leaders' and followers' work)
    # as a steady load on its cores: discrete jobs by the ten thousand per second would only
    # slow the simulation, and at a broker's many cores their queueing is small
    busy = max(0.0, peak * passes * a.replication / plan.brokers - tagged * passes) * pass_s
    broker = Server("broker", Machine("a broker", a.broker_cores, background=busy),
                    threads=a.broker_cores)
    hop = Delay(a.hop_ms / 1000)
    ack = Delay(2 * a.hop_ms / 1000 if a.replication > 1 else 0.0)  # acks=all: a follower's fetch
    bvisit = Visit(broker, Work(pass_s, "exp"))
    through_broker: tuple[Step, ...] = (hop, bvisit, ack, hop)
    route: list[Step] = [*through_broker]
    streams: list[Stream] = []
    for role in plan.roles:
        m = Machine(f"{role.name} replica", a.cores_per_replica)
        s = Server(role.name, m, per_batch=_half_batch(role.per_batch_ms, role.sigma))
        pre, post = _loop_visits(s, role.ms_per_request - role.per_batch_ms - role.model_ms,
                                 role.sigma)
        if role.name == cpu.model_role:
            if gpu is not None:
                per_replica = shares[role.name] * role.gpu_ms_per_request / 1000
                dev = Machine("GPU", 1.0, background=(role.replicas_per_gpu - 1) * per_replica)
                batcher = Batcher(f"{role.name} model", dev, cpu.max_batch_rows,
                                  cpu.max_wait_ms / 1000, lambda r: gpu.model_ms(r) / 1000,
                                  cpu.instances)
            else:
                # the model's thread on the replica's own cores
                batcher = Batcher(f"{role.name} model", m, cpu.max_batch_rows,
                                  cpu.max_wait_ms / 1000,
                                  lambda r: cpu.batch_ms(r) / cpu.slowdown / 1000,
                                  cpu.instances)
            steps: tuple[Step, ...] = (pre, Batch(batcher), post)
        else:
            steps = (pre, post)
        route += [*steps, *through_broker]
        extra = shares[role.name] - tagged
        if extra > 0:
            streams.append(Stream(extra, steps, rows=plan.candidates, tagged=False,
                                  partitions=a.partitions_per_replica))
    streams.insert(0, Stream(tagged, tuple(route), rows=plan.candidates,
                             partitions=a.partitions_per_replica))
    return streams
