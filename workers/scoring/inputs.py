"""The feature outputs (float32 dense, int64 sparse) -> a model's own inputs, per batch.

A model's ``config.toml`` names each graph input, the feature output that fills it
(``from``), the columns it takes (``fields``) and its dtype. The column selection and casts
are decided once here; a batch costs at most one ``take``/``astype`` per input, and none
for an input that takes a whole feature output in its own dtype (the reference model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.scoring.repository import ModelConfig


@dataclass(frozen=True)
class _Input:
    name: str
    source: str  # "dense" or "sparse"
    columns: np.ndarray | None  # None: every column, in order
    dtype: np.dtype


class InputBinding:
    """Builds the feeds of one model from the two arrays the feature pipeline produces."""

    def __init__(self, config: ModelConfig) -> None:
        produced = {"dense": config.dense_features, "sparse": config.sparse_features}
        inputs = []
        for name, spec in config.inputs.items():
            columns = produced[spec.source]
            whole = tuple(spec.fields) == tuple(columns)
            index = None if whole else np.array([columns.index(f) for f in spec.fields],
                                                dtype=np.intp)
            inputs.append(_Input(name, spec.source, index, np.dtype(spec.dtype)))
        self._inputs = tuple(inputs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._inputs)

    @property
    def positional(self) -> bool:
        """Whether the model takes exactly the whole dense (float32) and sparse (int64) arrays
        as two inputs, as the reference model does (what the CuPy graph compiler runs)."""
        kinds = sorted((i.source, i.columns is None, i.dtype.name) for i in self._inputs)
        return kinds == [("dense", True, "float32"), ("sparse", True, "int64")]

    def feeds(self, dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs for one batch, by graph input name."""
        arrays = {"dense": dense, "sparse": sparse}
        out: dict[str, np.ndarray] = {}
        for i in self._inputs:
            x = arrays[i.source]
            if i.columns is not None:
                x = np.take(x, i.columns, axis=1)
            out[i.name] = x if x.dtype == i.dtype else x.astype(i.dtype)
        return out
