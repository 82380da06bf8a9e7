"""Process-wide CuPy memory: one device pool and one pinned pool, a limit, and backpressure.

Every CuPy backend in the process allocates through the same ``cupy.cuda.MemoryPool`` (with a
hard limit) and the same ``cupy.cuda.PinnedMemoryPool``. A batch whose workspace does not fit
under the limit waits (``allocate_device``) until other batches free memory: that wait is the
GPU's backpressure signal. CuPy is imported lazily; without it ``pool_stats`` reports
``configured: False``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("adstream.workers.gpu_pool")

DEFAULT_LIMIT_FRACTION = 0.8
DEFAULT_WAIT_TIMEOUT_S = 30.0
_MAX_BACKOFF_S = 0.02


class PoolExhaustedError(MemoryError):
    """A batch could not get GPU memory under the pool limit in time (or can never fit)."""


class _State:
    """The process's pools and counters; created once by ``configure_pools``."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.device = cupy.get_default_memory_pool()
        self.pinned = cupy.get_default_pinned_memory_pool()
        cupy.cuda.set_allocator(self.device.malloc)
        cupy.cuda.set_pinned_memory_allocator(self.pinned.malloc)
        self.wait_timeout_s = DEFAULT_WAIT_TIMEOUT_S
        self.peak_bytes = 0
        self.pinned_bytes = 0
        self.waits = 0
        self.wait_seconds = 0.0
        self.freed = threading.Condition()
        self.capture = threading.RLock()  # CUDA graph capture vs. pool growth/shrink


_state: _State | None = None
_state_lock = threading.Lock()


def configure_pools(
    limit_bytes: int | None = None,
    limit_fraction: float | None = None,
    wait_timeout_s: float | None = None,
) -> None:
    """Installs the process-wide pools as CuPy's allocators (once) and sets the limit.

    ``limit_bytes`` or ``limit_fraction`` (of the device's total memory) set the device pool's
    hard limit; with neither, the first call uses 80% of the device and later calls keep it.
    """
    global _state
    if limit_bytes is not None and limit_fraction is not None:
        raise ValueError("give limit_bytes or limit_fraction, not both")
    if limit_fraction is not None and not 0 < limit_fraction <= 1:
        raise ValueError(f"limit_fraction must be in (0, 1], got {limit_fraction}")
    if limit_bytes is not None and limit_bytes < 0:
        raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes}")
    with _state_lock:
        first = _state is None
        if _state is None:
            import cupy

            _state = _State(cupy)
        state = _state
        if first and limit_bytes is None and limit_fraction is None:
            limit_fraction = DEFAULT_LIMIT_FRACTION
        if limit_fraction is not None:
            _, total = state.cupy.cuda.runtime.memGetInfo()
            limit_bytes = int(total * limit_fraction)
        if limit_bytes is not None:
            state.device.set_limit(size=int(limit_bytes))
        if wait_timeout_s is not None:
            state.wait_timeout_s = float(wait_timeout_s)
    if limit_bytes is not None:
        logger.info("gpu pool limit set to %d bytes (%.1f MiB)", limit_bytes, limit_bytes / 2**20)
    notify_freed()


def _pools() -> _State:
    if _state is None:
        configure_pools()
    assert _state is not None
    return _state


def device_pool() -> Any:
    """The process's ``cupy.cuda.MemoryPool``."""
    return _pools().device


def pinned_pool() -> Any:
    """The process's ``cupy.cuda.PinnedMemoryPool``."""
    return _pools().pinned


def capture_lock() -> threading.RLock:
    """Held while a CUDA graph is captured and while the pool may cudaMalloc/cudaFree."""
    return _pools().capture


def _note_peak(state: _State) -> None:
    total = state.device.total_bytes()
    state.peak_bytes = max(state.peak_bytes, total)


def allocate_device(nbytes: int, what: str = "batch", timeout_s: float | None = None) -> Any:
    """Allocates ``nbytes`` from the device pool on the current stream, waiting while the pool
    is at its limit. Raises PoolExhaustedError if it can never fit or the wait times out."""
    state = _pools()
    timeout = state.wait_timeout_s if timeout_s is None else timeout_s
    out_of_memory = state.cupy.cuda.memory.OutOfMemoryError
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.0005
    waited = False
    while True:
        limit = state.device.get_limit()
        if limit and nbytes > limit:
            raise PoolExhaustedError(
                f"{what} needs {nbytes} bytes of GPU memory, more than the pool limit of {limit} "
                "bytes; lower the batch size (max_batch_rows) or raise the limit"
            )
        if not limit or state.device.used_bytes() + nbytes <= limit:
            try:
                with state.capture:
                    mem = state.cupy.cuda.alloc(nbytes)
            except out_of_memory:
                pass
            else:
                _note_peak(state)
                if waited:
                    elapsed = time.monotonic() - start
                    state.wait_seconds += elapsed
                    logger.debug(
                        "%s got %d bytes after waiting %.1f ms", what, nbytes, 1e3 * elapsed
                    )
                return mem
        now = time.monotonic()
        if now >= deadline:
            raise PoolExhaustedError(
                f"{what} waited {timeout:.1f}s for {nbytes} bytes of GPU memory; pool uses "
                f"{state.device.used_bytes()} of its {limit}-byte limit (stats: {pool_stats()})"
            )
        if not waited:
            waited = True
            state.waits += 1
        with state.freed:
            state.freed.wait(min(delay, deadline - now))
        delay = min(delay * 2, _MAX_BACKOFF_S)


def notify_freed() -> None:
    """Wakes batches waiting for GPU memory (call after releasing a workspace)."""
    state = _state
    if state is not None:
        with state.freed:
            state.freed.notify_all()


def note_pinned(delta_bytes: int) -> None:
    """Tracks pinned staging bytes held by backends (the pinned pool has no byte counter)."""
    state = _pools()
    with _state_lock:
        state.pinned_bytes += delta_bytes


def reset_peak() -> None:
    """Restarts the peak measurement at the pool's current size."""
    state = _pools()
    state.peak_bytes = state.device.total_bytes()


def pool_stats() -> dict[str, Any]:
    """Device pool used/total/limit/peak bytes, pinned staging bytes and memory waits."""
    state = _state
    if state is None:
        return {"configured": False}
    return {
        "configured": True,
        "used_bytes": int(state.device.used_bytes()),
        "total_bytes": int(state.device.total_bytes()),
        "limit_bytes": int(state.device.get_limit()),
        "peak_bytes": int(max(state.peak_bytes, state.device.total_bytes())),
        "pinned_bytes": int(state.pinned_bytes),
        "pinned_free_blocks": int(state.pinned.n_free_blocks()),
        "waits": int(state.waits),
        "wait_seconds": round(state.wait_seconds, 6),
    }


def log_pool_stats(level: int = logging.INFO) -> dict[str, Any]:
    """Logs one line of pool usage and returns the stats."""
    stats = pool_stats()
    logger.log(level, "gpu pool %s", " ".join(f"{k}={v}" for k, v in stats.items()))
    return stats
