"""Random model inputs for the benchmarks and the GPU self-test."""

from __future__ import annotations

import numpy as np

from workers.scoring.repository import ModelConfig


def random_rows(config: ModelConfig, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows for ``config``'s model: standard-normal dense features and uniformly random
    in-range sparse ids. One distribution serves every caller: the timings (model limit,
    scorer and GPU benchmarks) and the parity checks depend only on the shapes and ranges."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, len(config.dense_features)), dtype=np.float32)
    buckets = np.asarray(config.sparse_buckets, dtype=np.int64)
    sparse = rng.integers(0, buckets, size=(n, len(buckets)), dtype=np.int64)
    return dense, sparse
