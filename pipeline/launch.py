"""How a supervisor starts a child: by running a command line, or by forking a zygote.

A child started from a command line pays for a new interpreter and every import before it
can load its models: 2.4 s for a worker on an idle 2-core VM, 5-14 s while the same cores
serve traffic. That is how long a dead member's partitions wait when no standby is loaded,
and how long a supervisor is without a standby after one took over. ``Fork`` starts
children from a zygote instead: multiprocessing's fork server (the standard library's, so
not ours to write), which imported the worker's modules once; a fork of it runs the entry
point at once and only loads its models (the scorer's ONNX session, the feature spec).

Both give a ``Child`` with the part of ``subprocess.Popen``'s interface the supervisor
uses. A standby's pipe (the end the supervisor writes the member index to) reaches the child
as a file descriptor named in ``ADSTREAM_STANDBY_FD``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from pipeline.membership import STANDBY_FD_ENV


class Child(Protocol):
    @property
    def pid(self) -> int: ...
    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...
    def wait(self) -> int: ...


class Launcher(Protocol):
    def start(self, args: list[str], env: dict[str, str], standby_fd: int | None) -> Child:
        """Start a child with ``args`` after the launcher's own, ``env`` added to this
        process's environment, and (for a standby) the pipe end ``standby_fd``."""
        ...


class Exec:
    """Children that run ``argv`` (any program)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def start(self, args: list[str], env: dict[str, str], standby_fd: int | None) -> Child:
        extra = {} if standby_fd is None else {STANDBY_FD_ENV: str(standby_fd)}
        return subprocess.Popen([*self.argv, *args], env={**os.environ, **env, **extra},
                                pass_fds=() if standby_fd is None else (standby_fd,))


class Fork:
    """Children forked from a zygote that imported ``preload``; each calls ``entry``
    (``"module:function"``, taking an argument list and returning an exit code) with
    ``argv`` and its own arguments, as ``argv0`` would have been run."""

    def __init__(self, entry: str, argv: Sequence[str], preload: Sequence[str],
                 argv0: str = "adstream") -> None:
        self.entry = entry
        self.argv = list(argv)
        self.argv0 = argv0
        self._context: Any = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))

    def start(self, args: list[str], env: dict[str, str], standby_fd: int | None) -> Child:
        # the pipe travels as a Connection: multiprocessing hands its descriptor to the fork
        pipe = None if standby_fd is None else Connection(os.dup(standby_fd), writable=False)
        proc = self._context.Process(
            target=_forked, args=(self.entry, self.argv0, [*self.argv, *args], env, pipe),
            name=f"{self.argv0} child")
        try:
            proc.start()
        finally:
            if pipe is not None:
                pipe.close()
        return _Forked(proc)


def _forked(entry: str, argv0: str, argv: list[str], env: dict[str, str],
            pipe: Connection | None) -> None:
    """The start of a forked child: its environment and argv, then the entry point."""
    _stop_with_parent()
    if pipe is not None:
        fd = os.dup(pipe.fileno())
        pipe.close()
        env = {**env, STANDBY_FD_ENV: str(fd)}
    os.environ.update(env)
    sys.argv = [argv0, *argv]
    module, _, name = entry.partition(":")
    sys.exit(getattr(importlib.import_module(module), name)(argv))


def _stop_with_parent() -> None:
    """Have the kernel send this child SIGTERM (a clean stop: drain, commit, exit) when its
    parent, the zygote, dies. The zygote exits with the supervisor, so a supervisor that was
    SIGKILLed leaves no worker running unsupervised; and a zygote killed on its own does not
    leave children the supervisor can no longer see (it hears them all exit, and forks new
    ones from a new zygote)."""
    if not sys.platform.startswith("linux"):
        return
    # multiprocessing hands every fork the supervisor's end of the zygote's liveness pipe
    # (for forks of forks); while a child holds it, the zygote would outlive a SIGKILLed
    # supervisor, and so would the child. This child forks nothing: it lets it go.
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: the child runs as it would have from a command line
    if os.getppid() != parent:  # the zygote died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Forked:
    """A forked child through the ``Child`` interface (its parent is the zygote, which
    reports its exit status to this process)."""

    def __init__(self, proc: Any) -> None:
        self._proc = proc
        self.pid: int = proc.pid

    def poll(self) -> int | None:
        code: int | None = self._proc.exitcode
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def wait(self) -> int:
        self._proc.join()
        code: int = self._proc.exitcode
        return code
