"""Worker processes a benchmark starts, and what the kernel says they cost.

Each role runs as its own ``adstream worker ROLE`` process (as in production) with its own
metrics port. CPU time and resident memory are read from ``/proc``, so the broker (a JVM)
and the load generator (this process) are measured the same way as the workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerStartError(RuntimeError):
    """A worker process exited or did not get its partitions; the message has its log."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of this machine spent busy since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def run_delay_seconds(pid: int) -> float | None:
    """Seconds the threads of ``pid`` alive now spent runnable but waiting for a core
    (``/proc/PID/task/*/schedstat``): how much the machine's other work slowed it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def listening_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (one this user may inspect)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    role: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            body: bytes = r.read()
        return body.decode()

    def ready(self) -> bool:
        """/readyz answers 200: the model is loaded and every actor has its partitions."""
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class WorkerSet:
    """One ``adstream worker ROLE`` process per role, all reading ``config``."""

    config: Path
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, roles: tuple[str, ...], *, timeout_s: float = 90.0) -> None:
        for role in roles:
            port = free_port()
            log = self.log_dir / f"{role}.log"
            env = {**os.environ, "ADSTREAM_METRICS_PORT": str(port),
                   "ADSTREAM_METRICS_HOST": "127.0.0.1"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", role,
                 "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
                env=env, start_new_session=True)
            self.workers.append(WorkerProcess(role, proc, log, port))
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            while not w.ready():
                if w.proc.poll() is not None:
                    raise WorkerStartError(f"the {w.role} worker exited with code "
                                           f"{w.proc.returncode}:\n{w.log_tail()}")
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"the {w.role} worker was not ready (/readyz) "
                                           f"within {timeout_s:.0f} s:\n{w.log_tail()}")
                time.sleep(0.2)

    def by_role(self, role: str) -> WorkerProcess:
        return next(w for w in self.workers if w.role == role)

    def dead(self) -> list[str]:
        return [f"{w.role} (exit {w.proc.returncode})" for w in self.workers
                if w.proc.poll() is not None]

    def stop(self, timeout_s: float = 30.0) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.workers.clear()


@dataclass
class CpuMeter:
    """CPU seconds of named processes between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    _start: dict[str, float | None] = field(default_factory=dict)
    _t0: float = 0.0
    _busy0: float | None = None
    machine_cores_busy: float | None = None  # every process on the machine, set by stop()
    wait_per_cpu: dict[str, float | None] = field(default_factory=dict)  # set by stop()
    _delay0: dict[str, float | None] = field(default_factory=dict)

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy0 = machine_busy_seconds()
        self._delay0 = {name: run_delay_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        """CPU seconds each process used, plus ``wall`` seconds elapsed."""
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), self._start.get(name)
            out[name] = None if now is None or then is None else round(now - then, 4)
        out["wall"] = round(time.monotonic() - self._t0, 4)
        busy = machine_busy_seconds()
        self.machine_cores_busy = (None if busy is None or self._busy0 is None or not out["wall"]
                                   else round((busy - self._busy0) / out["wall"], 3))
        for name, pid in self.pids.items():
            d1, d0, cpu = run_delay_seconds(pid), self._delay0.get(name), out.get(name)
            self.wait_per_cpu[name] = (None if d1 is None or d0 is None or not cpu
                                       else round((d1 - d0) / cpu, 3))
        return out
