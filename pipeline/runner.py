"""Run a coroutine on uvloop (when installed); SIGTERM/SIGINT stop it cleanly, once."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TypeVar

import structlog

from pipeline.stop_signals import Stop, StopSignals

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCE_EXIT_S = 5.0  # a forced stop that is still cleaning up after this long exits anyway
log = structlog.get_logger("adstream.runner")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory where uvloop is installed, else None (asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return None
    return uvloop.new_event_loop


def tune_gc() -> None:
    """Fewer, later collections: a worker holds thousands of live futures and arrays, and
    Python's default thresholds (a gen-0 pass every 700 allocations) cost it about a third
    of its throughput on the hot path. Objects alive at start-up are frozen out of GC."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
TRIM_EVERY_S = 1.0


def _glibc(name: str) -> Callable[..., int] | None:
    """The glibc function ``name`` (``mallopt``, ``malloc_trim``); None elsewhere."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def trim_periodically(loop: asyncio.AbstractEventLoop) -> None:
    """``malloc_trim(0)`` every ``TRIM_EVERY_S`` on ``loop``: gives the OS back the free pages
    inside every arena, where the trim threshold only reaches the top of the main heap (a
    burst of short-lived buffers leaves them scattered). No-op where libc is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return

    def tick() -> None:
        trim(0)
        loop.call_later(TRIM_EVERY_S, tick)

    loop.call_later(TRIM_EVERY_S, tick)


def tune_malloc() -> bool:
    """Give freed memory back to the OS: glibc raises its mmap threshold after freeing big
    blocks (fetch responses, batches), so later ones come from the heap and stay resident
    after a burst. Fixed thresholds (blocks over 1 MB mapped, heap trimmed above 4 MB free)
    keep a worker's RSS within ~1.35x of its steady value under a 5x overload, where the
    dynamic ones let it reach ~1.55x; onnxruntime's speed is the same either way (measured).
    At most two arenas: each thread that allocates (the model's, the feature plan's off the
    loop) otherwise gets an arena of its own whose freed blocks stay resident; together with
    :func:`trim_periodically` this brought the features role from 1.6-1.8x to ~1.1x under
    that overload (docs/bench/epyc-2/overload-rss.txt).
    False where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 4 * 1024 * 1024)) and bool(mallopt(_M_ARENA_MAX, 2))


def run(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)``. The first SIGTERM/SIGINT sets ``stop`` (repeats within a second
    are the same stop: see ``pipeline.stop_signals``); a later one cancels ``main`` and
    exits 1 at once, without draining and without a traceback."""
    signals = StopSignals()

    def outside_loop(signum: int, frame: FrameType | None) -> None:
        # before the loop runs (a stop is then noticed as soon as it does) and while it closes
        if signals.received() is Stop.FORCE:
            os._exit(1)

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            kind = signals.received()
            if kind is Stop.CLEAN:
                log.info("stopping: draining in-flight work, then committing")
                stop.set()
            elif kind is Stop.FORCE and task is not None:
                log.warning("stopping now, without draining (second signal)")
                task.cancel()
                loop.call_later(FORCE_EXIT_S, os._exit, 1)  # if cleaning up hangs

        if signals.first is not None:
            stop.set()
        trim_periodically(loop)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            if signals.forced:
                raise SystemExit(1) from None
            raise
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, outside_loop)

    tune_gc()
    tune_malloc()
    for sig in STOP_SIGNALS:
        signal.signal(sig, outside_loop)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(wrapper())
