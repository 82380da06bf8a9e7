"""Which version scores what: a sticky A/B split by user, and a shadow version.

The split sends a configured fraction of users to another version, decided by a hash of
the user id (the same user always lands on the same side). The shadow version scores a
sample of the primary's submissions in the background, after the primary answered; only
the difference is recorded (a histogram and a running summary), never the results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

BUCKETS = 10_000


def user_bucket(user_id: str | None) -> int:
    """A stable bucket in [0, 10000) for ``user_id`` (None: bucket 0)."""
    if not user_id:
        return 0
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=b"adstream-ab").digest()
    return int.from_bytes(digest, "little") % BUCKETS


@dataclass(frozen=True)
class Split:
    """``fraction`` of users (by :func:`user_bucket`) go to ``version``."""

    version: int
    fraction: float

    def version_for(self, user_id: str | None) -> int | None:
        """``version`` for users in the split, else None (the serving version)."""
        return self.version if user_bucket(user_id) < self.fraction * BUCKETS else None


@dataclass
class ShadowSummary:
    """Running |Δscore| statistics of the shadow version against the primary."""

    version: int
    every: int  # one submission in ``every`` is shadowed
    submissions: int = 0  # primary submissions seen
    shadowed: int = 0  # submissions the shadow scored
    skipped: int = 0  # sampled but not shadowed (the shadow's queue was full)
    rows: int = 0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    _sample: list[np.ndarray] = field(default_factory=list)
    _kept: int = 0

    def take(self) -> bool:
        """Whether this primary submission is shadowed (every ``every``-th one)."""
        self.submissions += 1
        return self.submissions % self.every == 0

    def add(self, delta: np.ndarray) -> None:
        self.shadowed += 1
        self.rows += int(delta.size)
        self.sum_abs += float(delta.sum())
        self.max_abs = max(self.max_abs, float(delta.max(initial=0.0)))
        if self._kept < 100_000:  # enough rows for a p99
            self._sample.append(delta)
            self._kept += int(delta.size)

    def report(self) -> dict[str, float | int]:
        sample = np.concatenate(self._sample) if self._sample else np.zeros(0)
        return {"shadow_version": self.version, "submissions": self.submissions,
                "shadowed": self.shadowed, "skipped": self.skipped, "rows": self.rows,
                "mean_abs_delta": self.sum_abs / self.rows if self.rows else 0.0,
                "p99_abs_delta": float(np.quantile(sample, 0.99)) if sample.size else 0.0,
                "max_abs_delta": self.max_abs}
