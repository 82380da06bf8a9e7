"""Run N copies of a worker command and keep them running.

Each child is one consumer-group member. A child that dies (crash, OOM kill, SIGKILL) is
restarted after a short backoff that grows while it keeps dying young; SIGTERM/SIGINT are
forwarded to every child, which drain and commit, and the supervisor exits 0 once all of
them did (children still running after the stop bound are killed).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import structlog

log = structlog.get_logger("adstream.supervisor")


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    def __init__(self, argv: list[str], processes: int, *, stop_timeout_s: float = 30.0,
                 min_uptime_s: float = 5.0, max_backoff_s: float = 10.0,
                 child_args: Callable[[int], list[str]] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"--processes must be at least 1, not {processes}")
        self.argv = argv
        self.processes = processes
        self.stop_timeout_s = stop_timeout_s
        self.min_uptime_s = min_uptime_s
        self.max_backoff_s = max_backoff_s
        self.child_args = child_args
        self.children: list[_Child] = []
        self.restarts = 0
        self._stopping = False

    def _spawn(self, index: int, restarts: int = 0) -> _Child:
        extra = self.child_args(index) if self.child_args is not None else []
        proc = subprocess.Popen([*self.argv, *extra])
        log.info("started child", index=index, pid=proc.pid, restarts=restarts)
        return _Child(index, proc, restarts=restarts)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # a second signal: stop waiting
            for c in self.children:
                if c.proc.poll() is None:
                    c.proc.kill()
        self._stopping = True
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.send_signal(signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.children = [self._spawn(i) for i in range(self.processes)]
        backoff: dict[int, float] = {}
        while not self._stopping:
            time.sleep(0.1)
            for pos, c in enumerate(self.children):
                code = c.proc.poll()
                if code is None or self._stopping:
                    continue
                now = time.monotonic()
                young = now - c.started < self.min_uptime_s
                delay = min(self.max_backoff_s, backoff.get(c.index, 0.25) * 2) if young else 0.25
                backoff[c.index] = delay
                log.warning("child exited; restarting", index=c.index, pid=c.proc.pid,
                            exit_code=code, restart_in_s=delay)
                time.sleep(delay)
                if self._stopping:
                    break
                self.restarts += 1
                self.children[pos] = self._spawn(c.index, c.restarts + 1)
        deadline = time.monotonic() + self.stop_timeout_s
        codes = []
        for c in self.children:
            try:
                codes.append(c.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing it", pid=c.proc.pid)
                c.proc.kill()
                codes.append(c.proc.wait())
        log.info("supervisor stopped", exit_codes=codes, restarts=self.restarts)
        return 0 if all(code == 0 for code in codes) else 1
