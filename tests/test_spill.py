"""Hybrid spill: while the primary backend's queue stays over a bound, batches go to a slower
spill backend in the same batcher.

No GPU here: both backends are real onnxruntime sessions wrapped in :class:`Paced`, which
EMULATES a device by sleeping each batch out to a fixed time (20 ms for the "fast" primary,
30 ms for the slower spill instance), so their capacities are known and load-independent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.batcher import DynamicBatcher
from pipeline.config import amended
from pipeline.metrics import Metrics
from workers.roles import scoring_batcher
from workers.scoring.backends import create_backend
from workers.scoring.repository import ModelSpec, load_model
from workers.settings import Settings

ROWS, MAX_ROWS = 64, 256
PRIMARY_S, SPILL_S = 0.020, 0.030  # per batch: primary 12,800 rows/s, spill 8,533 rows/s
DEADLINE_S = 0.25


class Paced:
    """Emulates a device of fixed batch time: scores with onnxruntime, then sleeps the rest
    of ``seconds`` (the sleep releases the GIL, as a device wait does)."""

    def __init__(self, spec: ModelSpec, seconds: float) -> None:
        self.backend = create_backend(spec, "onnxruntime")
        self.seconds = seconds

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.backend.score(dense, sparse)
        time.sleep(max(0.0, self.seconds - (time.perf_counter() - start)))
        return out


@pytest.fixture(scope="module")
def spec(model_repo: Path) -> ModelSpec:
    return load_model(model_repo, "ctr")


def _inputs(spec: ModelSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((n * ROWS, 13)).astype(np.float32)
    sparse = rng.integers(0, np.asarray(spec.config.sparse_buckets), (n * ROWS, 26))
    return dense, sparse.astype(np.int64)


async def _offer(batcher: DynamicBatcher, dense: np.ndarray, sparse: np.ndarray,
                 rows_per_s: float) -> tuple[set[int], list[np.ndarray]]:
    """Open loop: one 64-row submission per interval whatever the answers do; returns the
    submissions answered after their deadline, and every submission's scores."""
    n = dense.shape[0] // ROWS
    interval = ROWS / rows_per_s
    late: set[int] = set()
    outs: list[np.ndarray] = [np.empty(0, np.float32)] * n

    async def one(i: int, at: float) -> None:
        d, s = dense[i * ROWS:(i + 1) * ROWS], sparse[i * ROWS:(i + 1) * ROWS]
        outs[i] = await batcher.submit(d, s, deadline=at + DEADLINE_S)
        if time.monotonic() > at + DEADLINE_S:
            late.add(i)

    runner = asyncio.create_task(batcher.run())
    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            at = start + i * interval
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tg.create_task(one(i, at))
    batcher.close()
    await runner
    return late, outs


def _batcher(spec: ModelSpec, spill: bool) -> DynamicBatcher:
    return DynamicBatcher([Paced(spec, PRIMARY_S)], max_rows=MAX_ROWS, max_wait_ms=2,
                          spill=[Paced(spec, SPILL_S)] if spill else [],
                          spill_queue_rows=MAX_ROWS, spill_after_ms=5)


async def test_the_spill_backend_serves_the_excess_and_nothing_more_expires(
        spec: ModelSpec) -> None:
    dense, sparse = _inputs(spec, 500)
    offered = 16_640.0  # 1.3 x the primary's 12,800 rows/s, under primary + spill (21,333)
    late_single, _ = await _offer(_batcher(spec, spill=False), dense, sparse, offered)
    hybrid = _batcher(spec, spill=True)
    late_spill, outs = await _offer(hybrid, dense, sparse, offered)
    assert len(late_single) > 100, len(late_single)  # one backend cannot keep up
    assert late_spill <= late_single and not late_spill, sorted(late_spill)[:10]
    spilled = hybrid.stats.spilled_rows / hybrid.stats.rows
    assert hybrid.stats.spilled_batches > 0 and 0.15 < spilled < 0.6, hybrid.stats
    direct = create_backend(spec, "onnxruntime").score(dense, sparse)
    np.testing.assert_array_equal(np.concatenate(outs), direct)  # spilled rows scored right


async def test_nothing_spills_below_the_primary_capacity(spec: ModelSpec) -> None:
    dense, sparse = _inputs(spec, 100)
    hybrid = _batcher(spec, spill=True)
    # a quarter of the primary's full-batch capacity: one submission per batch time
    late, _ = await _offer(hybrid, dense, sparse, 3_200.0)
    assert not late and hybrid.stats.spilled_batches == 0, hybrid.stats


def test_the_scorer_builds_its_spill_instances_from_settings(model_repo: Path,
                                                             spec: ModelSpec) -> None:
    s = amended(Settings(), scorer={"model_repo": str(model_repo), "spill_backend": "onnxruntime",
                                    "spill_instances": 2, "spill_queue_rows": 512})
    metrics = Metrics()
    batcher = scoring_batcher(s, spec, metrics)
    assert (len(batcher._models), batcher._n_primary, batcher.spill_queue_rows) == (3, 1, 512)
    names = {m.name for m in metrics.collect()}
    assert {"adstream_spilled_batches", "adstream_spilled_rows"} <= names
    assert "spill 2 x OnnxCpuBackend" in metrics.readiness()["model"].detail
