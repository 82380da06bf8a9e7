"""Process-level cache of model weights on the GPU: uploaded once, shared by every instance.

Keyed by the model file (path, size, mtime) and the compute dtype; reference counted so the
weights leave the device when the last backend using them closes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.scoring.backends.cupy_pool import PoolExhaustedError, capture_lock, notify_freed
from workers.scoring.backends.graph_plan import Plan, compile_plan
from workers.scoring.backends.plan_exec import PlanWeights, prepare_weights

logger = logging.getLogger("adstream.workers.gpu_weights")

WeightsKey = tuple[str, int, int, str, int]


@dataclass
class _Entry:
    plan: Plan
    weights: PlanWeights
    refs: int


_cache: dict[WeightsKey, _Entry] = {}
_lock = threading.Lock()


def weights_key(path: Path, dtype: str, device_id: int) -> WeightsKey:
    """Identifies one model file's weights in one dtype on one device."""
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, dtype, device_id)


def _upload(plan: Plan, dtype: str, path: Path) -> PlanWeights:
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    try:
        with capture_lock(), stream:
            weights = prepare_weights(plan, np.dtype(dtype), cupy.asarray)
            stream.synchronize()
    except cupy.cuda.memory.OutOfMemoryError as exc:
        raise PoolExhaustedError(
            f"cannot upload the weights of {path} ({plan.weight_bytes} bytes as float32) to the "
            f"GPU under the pool limit: {exc}"
        ) from exc
    return weights


def acquire_weights(
    path: Path, dtype: str, device_id: int, plan: Plan | None = None
) -> tuple[WeightsKey, Plan, PlanWeights]:
    """Returns the device weights of ``path`` in ``dtype``, uploading them on first use."""
    key = weights_key(path, dtype, device_id)
    with _lock:
        entry = _cache.get(key)
        if entry is None:
            plan = plan if plan is not None else compile_plan(path)
            weights = _upload(plan, dtype, path)
            entry = _cache[key] = _Entry(plan, weights, 0)
            logger.info(
                "uploaded weights of %s as %s: %d bytes on device %d",
                path,
                dtype,
                weights.nbytes,
                device_id,
            )
        entry.refs += 1
        return key, entry.plan, entry.weights


def release_weights(key: WeightsKey) -> None:
    """Drops one reference; the last one frees the device copy."""
    with _lock:
        entry = _cache.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del _cache[key]
    notify_freed()


def cached_weights() -> list[dict[str, Any]]:
    """One line per model held on the device: path, dtype, bytes and users."""
    with _lock:
        return [
            {"path": k[0], "dtype": k[3], "device": k[4], "bytes": e.weights.nbytes, "refs": e.refs}
            for k, e in _cache.items()
        ]
