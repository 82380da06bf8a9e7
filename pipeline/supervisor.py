"""Run N copies of a worker command and keep them running.

Each child is one consumer-group member. A child that dies (crash, OOM kill, SIGKILL) is
restarted after a short backoff that grows while it keeps dying young; the first SIGTERM/SIGINT
is forwarded to every child once, which drain and commit, and the supervisor exits 0 once
all of them did (children still running after the stop bound are killed); a later signal is
forwarded too and the children exit at once. Child ``i`` learns its index from
``ADSTREAM_CHILD_INDEX`` (its stable group instance id: ``pipeline.membership``).

With ``standby`` > 0 the supervisor also keeps that many standbys: children started the same
way, models loaded, that have not joined the group. When a member dies, a standby takes its
index at once (a line on a pipe; with static membership it rejoins as the dead member's
instance and gets its partitions back without a rebalance), so the member's partitions wait
for a join instead of for a process start and model load; a new standby is then started.
Children come from a ``pipeline.launch`` launcher: a command line, or forks of a zygote that
imported the worker's modules already (a new standby is then loaded in about a second).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import structlog

from pipeline.launch import Child, Exec, Launcher
from pipeline.membership import CHILD_INDEX_ENV, STANDBY
from pipeline.stop_signals import Stop, StopSignals

log = structlog.get_logger("adstream.supervisor")


@dataclass
class _Child:
    slot: int  # what child_args is called with (a metrics port each): 0 .. processes+standby-1
    index: int | None  # the group member it is (ADSTREAM_CHILD_INDEX); None: a standby
    proc: Child
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    standby_fd: int | None = None  # a standby's end of its pipe: its index is written there


class Supervisor:
    def __init__(self, launcher: Launcher | list[str], processes: int, *, standby: int = 0,
                 stop_timeout_s: float = 30.0, min_uptime_s: float = 5.0,
                 max_backoff_s: float = 10.0, force_timeout_s: float = 6.0,
                 child_args: Callable[[int], list[str]] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"--processes must be at least 1, not {processes}")
        if standby < 0:
            raise ValueError(f"--standby must be 0 or more, not {standby}")
        self.launcher = Exec(launcher) if isinstance(launcher, list) else launcher
        self.processes = processes
        self.standby = standby
        self.stop_timeout_s = stop_timeout_s
        self.min_uptime_s = min_uptime_s
        self.max_backoff_s = max_backoff_s
        self.force_timeout_s = force_timeout_s
        self.child_args = child_args
        self.children: list[_Child] = []
        self.restarts = 0
        self.takeovers = 0
        self._stopping = False
        self._signals = StopSignals()
        self._deadline = float("inf")  # when children still running are killed
        self._wake_r = self._wake_w = -1  # written by a stop signal: ends the pause at once

    def _spawn(self, slot: int, index: int | None, restarts: int = 0) -> _Child:
        """Start a member (``index``) or, with ``index`` None, a standby: it loads its
        models, then waits on a pipe for the index of the member it is to replace."""
        extra = self.child_args(slot) if self.child_args is not None else []
        env = {CHILD_INDEX_ENV: STANDBY if index is None else str(index)}
        read_fd = write_fd = None
        if index is None:
            read_fd, write_fd = os.pipe()
        try:
            proc = self.launcher.start(extra, env, read_fd)
        finally:
            if read_fd is not None:
                os.close(read_fd)
        log.info("started child", index=STANDBY if index is None else index, pid=proc.pid,
                 restarts=restarts)
        return _Child(slot, index, proc, restarts=restarts, standby_fd=write_fd)

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
        self.children = [self._spawn(i, i) for i in range(self.processes)]
        self.children += [self._spawn(self.processes + k, None) for k in range(self.standby)]
        self._log_members()
        backoff: dict[int, float] = {}
        while not self._stopping:
            self._pause(0.05)
            for pos, c in enumerate(self.children):
                code = c.proc.poll()
                if code is None or self._stopping:
                    continue
                self._close_pipe(c)
                promoted = c.index is not None and self._take_over(c, code)
                if not promoted:
                    log.warning("child exited; restarting",
                                index=STANDBY if c.index is None else c.index,
                                pid=c.proc.pid, exit_code=code)
                young = time.monotonic() - c.started < self.min_uptime_s
                delay = min(self.max_backoff_s, backoff.get(c.slot, 0.25) * 2) if young else 0.25
                backoff[c.slot] = delay
                if young or not promoted:  # a member taken over needs no pause before
                    self._pause(delay)     # its new standby, unless they keep dying young
                if self._stopping:
                    break
                self.restarts += 1
                self.children[pos] = self._spawn(c.slot, None if promoted else c.index,
                                                 c.restarts + 1)
                self._log_members()
        for c in self.children:
            self._close_pipe(c)  # a standby reads the end of its pipe: it exits
        codes = [self._wait(c) for c in self.children]
        log.info("supervisor stopped", exit_codes=codes, restarts=self.restarts,
                 takeovers=self.takeovers)
        return 0 if all(code == 0 for code in codes) else 1

    def _take_over(self, dead: _Child, code: int) -> bool:
        """Hand member ``dead.index`` to a running standby at once (it joins the group
        under that member's instance id and gets its partitions back, no rebalance);
        False when no standby is running."""
        for s in self.children:
            if s.index is not None or s.standby_fd is None or s.proc.poll() is not None:
                continue
            try:
                os.write(s.standby_fd, f"{dead.index}\n".encode())
            except OSError:  # it died just now: the loop restarts it
                continue
            self._close_pipe(s)
            s.index = dead.index
            s.started = time.monotonic()
            self.takeovers += 1
            log.warning("child exited; a standby takes over", index=dead.index,
                        pid=dead.proc.pid, exit_code=code, standby_pid=s.proc.pid)
            return True
        return False

    @staticmethod
    def _close_pipe(c: _Child) -> None:
        if c.standby_fd is not None:
            os.close(c.standby_fd)
            c.standby_fd = None

    def _log_members(self) -> None:
        log.info("members", members={c.index: c.proc.pid for c in self.children
                                     if c.index is not None},
                 standby=[c.proc.pid for c in self.children if c.index is None])

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
