"""The scoring backend contract shared by the onnxruntime and CuPy backends."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class UnsupportedModelError(ValueError):
    """A backend cannot run this model; the message names the operator and the node."""

    def __init__(self, message: str, op_type: str | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.op_type = op_type
        self.node = node


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine (e.g. no CuPy or no CUDA device)."""


@runtime_checkable
class ScoringBackend(Protocol):
    """Scores CTR batches: float32 [N, dense] and int64 [N, sparse] in, float32 [N] out.

    ``score`` is safe to call from a worker thread; each instance serialises its own calls.
    """

    name: str

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Returns the CTR of each row as float32 [N]."""
        ...

    def close(self) -> None:
        """Releases the backend's resources; it cannot score afterwards."""
        ...


def check_batch(dense: np.ndarray, sparse: np.ndarray, n_dense: int, n_sparse: int) -> int:
    """Checks the dtypes and shapes of one batch and returns its row count."""
    if not isinstance(dense, np.ndarray) or dense.dtype != np.float32:
        raise ValueError(f"dense must be a float32 numpy array, got {_describe(dense)}")
    if not isinstance(sparse, np.ndarray) or sparse.dtype != np.int64:
        raise ValueError(f"sparse must be an int64 numpy array, got {_describe(sparse)}")
    if dense.ndim != 2 or dense.shape[1] != n_dense:
        raise ValueError(f"dense must have shape [N, {n_dense}], got {list(dense.shape)}")
    if sparse.ndim != 2 or sparse.shape[1] != n_sparse:
        raise ValueError(f"sparse must have shape [N, {n_sparse}], got {list(sparse.shape)}")
    if dense.shape[0] != sparse.shape[0]:
        raise ValueError(
            f"dense has {dense.shape[0]} rows but sparse has {sparse.shape[0]}; they must match"
        )
    return int(dense.shape[0])


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {list(value.shape)}"
    return type(value).__name__
