"""onnxruntime CPU backend: one InferenceSession per instance, safe to run beside others."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from workers.scoring.backends.base import check_batch
from workers.scoring.inputs import InputBinding
from workers.scoring.repository import ModelSpec


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Options for one of several concurrent sessions: fixed small thread pools, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads must not spin: several sessions share the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxCpuBackend:
    """Scores with onnxruntime's CPU execution provider (``run`` is thread-safe)."""

    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, *, intra_op_threads: int | None = None) -> None:
        threads = intra_op_threads or spec.config.intra_op_threads
        if threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {threads}")
        self.spec = spec
        self.intra_op_threads = threads
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            str(spec.path),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._n_dense = len(spec.config.dense_features)
        self._n_sparse = len(spec.config.sparse_features)
        self._output = spec.config.output_name
        self._binding = InputBinding(spec.config)

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Returns float32 [N] CTRs."""
        n = check_batch(dense, sparse, self._n_dense, self._n_sparse)
        if self._session is None:
            raise RuntimeError("this OnnxCpuBackend is closed")
        if n == 0:
            return np.empty(0, dtype=np.float32)
        (scores,) = self._session.run([self._output], self._binding.feeds(dense, sparse))
        return np.ascontiguousarray(scores, dtype=np.float32).reshape(n)

    def warmup(self, rows: int | None = None) -> None:
        """Runs one all-zero batch so the first real batch does not pay for initialisation."""
        rows = rows or (self.spec.config.preferred_batch_rows or (256,))[0]
        dense = np.zeros((rows, self._n_dense), dtype=np.float32)
        sparse = np.zeros((rows, self._n_sparse), dtype=np.int64)
        self.score(dense, sparse)

    def close(self) -> None:
        """Drops the session."""
        self._session = None
