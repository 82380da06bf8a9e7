"""A histogram the event loop fills without locks, turned into a metric family at scrape time."""

from __future__ import annotations

from bisect import bisect_left

import numpy as np
from prometheus_client.core import HistogramMetricFamily


class Histogram:
    """Bucket counts and a sum, updated by one thread (the event loop) without locks."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """``n`` observations of ``value`` (a batch's records share its time)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def observe_many(self, values: np.ndarray) -> None:
        """Every value of ``values`` (one pass in numpy)."""
        at = np.searchsorted(np.asarray(self.bounds), values, side="left")
        for i, n in enumerate(np.bincount(at, minlength=len(self.counts)).tolist()):
            self.counts[i] += n
        self.sum += float(np.sum(values))

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        counts, total, cumulative = list(self.counts), self.sum, 0
        buckets = []
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(labels, buckets, total)
