"""Run N copies of a worker command and keep them running.

Each child is one consumer-group member. A child that dies (crash, OOM kill, SIGKILL) is
restarted after a short backoff that grows while it keeps dying young; the first SIGTERM/SIGINT
is forwarded to every child once, which drain and commit, and the supervisor exits 0 once
all of them did (children still running after the stop bound are killed); a later signal is
forwarded too and the children exit at once. Child ``i`` learns its index from
``ADSTREAM_CHILD_INDEX`` (its stable group instance id: ``pipeline.membership``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import structlog

from pipeline.membership import CHILD_INDEX_ENV
from pipeline.stop_signals import Stop, StopSignals

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
                 force_timeout_s: float = 6.0,
                 child_args: Callable[[int], list[str]] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"--processes must be at least 1, not {processes}")
        self.argv = argv
        self.processes = processes
        self.stop_timeout_s = stop_timeout_s
        self.min_uptime_s = min_uptime_s
        self.max_backoff_s = max_backoff_s
        self.force_timeout_s = force_timeout_s
        self.child_args = child_args
        self.children: list[_Child] = []
        self.restarts = 0
        self._stopping = False
        self._signals = StopSignals()
        self._deadline = float("inf")  # when children still running are killed
        self._wake_r = self._wake_w = -1  # written by a stop signal: ends the pause at once

    def _spawn(self, index: int, restarts: int = 0) -> _Child:
        extra = self.child_args(index) if self.child_args is not None else []
        proc = subprocess.Popen([*self.argv, *extra],
                                env={**os.environ, CHILD_INDEX_ENV: str(index)})
        log.info("started child", index=index, pid=proc.pid, restarts=restarts)
        return _Child(index, proc, restarts=restarts)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Pass a stop on to every child: a clean one once (the same stop heard again from
        a terminal and an orchestrator is not passed on twice), a later forced one too,
        and then wait only ``force_timeout_s`` for them."""
        kind = self._signals.received()
        if kind is Stop.NONE:
            return
        if kind is Stop.FORCE:
            log.warning("stopping children now, without draining (second signal)")
            self._deadline = min(self._deadline, time.monotonic() + self.force_timeout_s)
        else:
            log.info("stopping children: they drain, commit and exit",
                     children=len(self.children))
            self._deadline = time.monotonic() + self.stop_timeout_s
        self._stopping = True
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.send_signal(signum)
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                os.write(self._wake_w, b"\0")

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a stop signal comes meanwhile (a sleep would
        resume after the signal's handler: a restart backoff would delay the stop)."""
        ready, _, _ = select.select([self._wake_r], [], [], seconds)
        if ready:
            os.read(self._wake_r, 4096)

    def run(self) -> int:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        try:
            return self._supervise()
        finally:
            r, w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1  # before closing: the handler skips the write
            os.close(r)
            os.close(w)

    def _supervise(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.children = [self._spawn(i) for i in range(self.processes)]
        backoff: dict[int, float] = {}
        while not self._stopping:
            self._pause(0.1)
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
                self._pause(delay)
                if self._stopping:
                    break
                self.restarts += 1
                self.children[pos] = self._spawn(c.index, c.restarts + 1)
        codes = [self._wait(c) for c in self.children]
        log.info("supervisor stopped", exit_codes=codes, restarts=self.restarts)
        return 0 if all(code == 0 for code in codes) else 1

    def _wait(self, c: _Child) -> int:
        """``c``'s exit code once it stopped; killed when it outlives the stop deadline
        (which a forced stop brings forward meanwhile)."""
        while True:
            code = c.proc.poll()
            if code is not None:
                return code
            if time.monotonic() >= self._deadline:
                log.warning("child did not stop in time; killing it", pid=c.proc.pid)
                c.proc.kill()
                return c.proc.wait()
            self._pause(0.05)
