"""The hardware's own limit: raw onnxruntime rows/s for the model, in this process, with one
thread, at the batch sizes the scoring worker's batcher actually formed.

The batch sizes come from the scorer's ``adstream_batch_rows`` histogram (the difference of
two scrapes). Each non-empty bucket is timed at one representative size (the geometric
middle of its bounds, scaled so that the buckets add up to the rows the histogram counted),
and the limit is the rows of all buckets over the time the model alone needs for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest.random_rows import random_rows
from workers.scoring.backends import create_backend
from workers.scoring.repository import ModelSpec

BATCH_ROWS = "adstream_batch_rows"


@dataclass(frozen=True)
class RowHistogram:
    """Batches per bucket ``(lo, hi]`` of the scorer's batch-size histogram."""

    bounds: tuple[float, ...]  # upper bounds, ascending, without +Inf
    counts: tuple[int, ...]  # batches per bucket; the last is (bounds[-1], +Inf)
    rows: float  # the histogram's _sum: all rows

    @property
    def batches(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def minus(self, before: RowHistogram) -> RowHistogram:
        return RowHistogram(self.bounds,
                            tuple(a - b for a, b in zip(self.counts, before.counts, strict=True)),
                            self.rows - before.rows)

    def buckets(self) -> list[dict[str, float | int]]:
        """Non-empty buckets as ``{"lo", "hi", "batches"}`` (hi = inf for the last)."""
        out = []
        for i, n in enumerate(self.counts):
            if n:
                lo = self.bounds[i - 1] if i else 0.0
                hi = self.bounds[i] if i < len(self.bounds) else math.inf
                out.append({"lo": lo, "hi": hi, "batches": n})
        return out

    def representative_sizes(self, max_rows: int) -> list[tuple[int, int]]:
        """``(size, batches)`` per non-empty bucket, sizes scaled to match the row total."""
        raw = []
        for b in self.buckets():
            lo, hi = max(float(b["lo"]), 0.5), min(float(b["hi"]), float(max_rows))
            raw.append((math.sqrt(lo * hi) if hi > lo else hi, int(b["batches"])))
        est = sum(s * n for s, n in raw)
        scale = self.rows / est if est else 1.0
        return [(max(1, min(max_rows, round(s * scale))), n) for s, n in raw]


def parse_row_histogram(metrics_text: str) -> RowHistogram:
    """The ``adstream_batch_rows`` histogram of one process's /metrics (all models summed)."""
    cum: dict[float, float] = {}
    total = 0.0
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != BATCH_ROWS:
            continue
        for s in fam.samples:
            if s.name == BATCH_ROWS + "_bucket":
                le = float(s.labels["le"])
                cum[le] = cum.get(le, 0.0) + s.value
            elif s.name == BATCH_ROWS + "_sum":
                total += s.value
    if not cum:
        raise ValueError(f"no {BATCH_ROWS} histogram in the scorer's metrics")
    les = sorted(cum)
    counts, prev = [], 0.0
    for le in les:
        counts.append(round(cum[le] - prev))
        prev = cum[le]
    bounds = tuple(le for le in les if not math.isinf(le))
    return RowHistogram(bounds, tuple(counts), total)


def time_batches(spec: ModelSpec, sizes: list[int], *, seconds_per_size: float = 1.0,
                 threads: int = 1) -> dict[int, float]:
    """Seconds per batch of each size: raw onnxruntime, ``threads`` intra-op threads."""
    backend = create_backend(spec, "onnxruntime", intra_op_threads=threads)
    try:
        dense, sparse = random_rows(spec.config, max(sizes) * 4)
        out = {}
        for size in sorted(set(sizes)):
            for _ in range(3):  # warm-up
                backend.score(dense[:size], sparse[:size])
            n, start = 0, time.perf_counter()
            while True:
                off = (n % 4) * size
                backend.score(dense[off:off + size], sparse[off:off + size])
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds_per_size and n >= 5:
                    break
            out[size] = elapsed / n
        return out
    finally:
        backend.close()


def limit(spec: ModelSpec, hist: RowHistogram, max_rows: int, *,
          seconds_per_size: float = 1.0) -> dict[str, Any]:
    """Raw rows/s at the formed batch sizes, and the timing per size behind it."""
    if not hist.batches:
        raise ValueError("the scorer formed no batches, so there are no sizes to time")
    sizes = hist.representative_sizes(max_rows)
    per_batch = time_batches(spec, [s for s, _ in sizes], seconds_per_size=seconds_per_size)
    rows = sum(s * n for s, n in sizes)
    seconds = sum(per_batch[s] * n for s, n in sizes)
    return {
        "rows_per_s": round(rows / seconds, 1),
        "threads": 1,
        "sizes": [{"rows": s, "batches": n, "ms_per_batch": round(per_batch[s] * 1000, 4),
                   "rows_per_s": round(s / per_batch[s], 1)} for s, n in sizes],
    }
