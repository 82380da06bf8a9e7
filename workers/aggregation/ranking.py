"""Ranking a request's scored candidates: top-K by expected value (score x bid)."""

from __future__ import annotations

import numpy as np


def rank(ad_id: np.ndarray, bid: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top ``k`` by expected value (score × bid), ties broken by ad id."""
    ev = score.astype(np.float64) * bid.astype(np.float64)
    if len(ev) > 4 * k:
        cut = np.argpartition(-ev, k - 1)[:k]
        threshold = ev[cut].min()
        cand = np.flatnonzero(ev >= threshold)  # keep ties at the cut for a stable order
    else:
        cand = np.arange(len(ev))
    order = np.lexsort((ad_id[cand], -ev[cand]))
    return cand[order[:k]]
