"""Run a coroutine on uvloop (when installed) with SIGTERM/SIGINT setting a stop event."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_malloc() -> bool:
    """Give freed memory back to the OS: glibc raises its mmap threshold after freeing big
    blocks (fetch responses, batches), so later ones come from the heap and stay resident
    after a burst. Fixed thresholds (blocks over 1 MB mapped, heap trimmed above 4 MB free)
    keep a worker's RSS within ~1.35x of its steady value under a 5x overload, where the
    dynamic ones let it reach ~1.55x; onnxruntime's speed is the same either way (measured).
    False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 4 * 1024 * 1024))


def run(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)``; the first SIGTERM/SIGINT sets ``stop``, a second one interrupts."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    tune_gc()
    tune_malloc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(wrapper())
