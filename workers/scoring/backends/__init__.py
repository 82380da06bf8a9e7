"""Scoring backends: onnxruntime on CPU (default) and CuPy on an NVIDIA GPU.

Importing this package never imports CuPy; ``create_backend(spec, "cupy")`` does.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from workers.scoring.backend_names import BACKENDS
from workers.scoring.backends.base import (
    BackendUnavailableError,
    ScoringBackend,
    UnsupportedModelError,
    check_batch,
)
from workers.scoring.inputs import InputBinding
from workers.scoring.repository import ModelSpec

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ScoringBackend",
    "UnsupportedModelError",
    "check_batch",
    "create_backend",
    "cuda_available",
]

logger = logging.getLogger("adstream.workers.backends")

_ONNX_OPTIONS = frozenset({"intra_op_threads"})
_CUPY_OPTIONS = frozenset(
    {
        "dtype",
        "cuda_graphs",
        "preferred_batch_rows",
        "stream",
        "pool_limit_bytes",
        "pool_limit_fraction",
        "wait_timeout_s",
        "max_chunk_rows",
    }
)


@cache
def cuda_available() -> tuple[bool, str]:
    """Whether CuPy can use a CUDA device here, and why not when it cannot."""
    try:
        import cupy
    except ImportError as exc:
        return False, f"CuPy is not installed ({exc}); install the 'gpu' extra"
    except Exception as exc:  # a broken CUDA install raises anything
        return False, f"CuPy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError and missing-library errors
        return False, f"no usable CUDA driver/device: {type(exc).__name__}: {exc}"
    if count < 1:
        return False, "CUDA reports no GPU devices"
    return True, ""


def _split_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    known = _ONNX_OPTIONS | _CUPY_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown backend option(s) {unknown}; onnxruntime takes {sorted(_ONNX_OPTIONS)}, "
            f"cupy takes {sorted(_CUPY_OPTIONS)}"
        )
    accepted = _ONNX_OPTIONS if kind == "onnxruntime" else _CUPY_OPTIONS
    return {k: v for k, v in options.items() if k in accepted}


def create_backend(spec: ModelSpec, backend: str | None = None, **options: Any) -> ScoringBackend:
    """Creates a backend for ``spec`` (``backend`` defaults to the model config's).

    Options meant for the other backend are ignored. A model the CuPy backend cannot run
    falls back to onnxruntime with a warning naming the operator; asking for CuPy where CUDA
    is unavailable raises BackendUnavailableError.
    """
    kind = backend or spec.config.backend
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "cupy":
        from workers.scoring.backends.graph_plan import compile_plan

        try:
            if not InputBinding(spec.config).positional:
                raise UnsupportedModelError(
                    "it compiles models whose inputs are the whole dense (float32) and sparse "
                    "(int64) feature arrays; this config selects columns or casts")
            plan = compile_plan(spec.path)
        except UnsupportedModelError as exc:
            logger.warning(
                "model %s version %d: the cupy backend cannot run it: %s; "
                "falling back to onnxruntime",
                spec.name,
                spec.version,
                exc,
            )
            return _onnx(spec, options)
        ok, reason = cuda_available()
        if not ok:
            raise BackendUnavailableError(
                f"backend 'cupy' was requested for model {spec.name} but CUDA is unavailable: "
                f"{reason}"
            )
        from workers.scoring.backends.cupy_graph import CupyBackend

        return CupyBackend(spec, plan=plan, **_split_options("cupy", options))
    if kind == "onnxruntime-cuda":
        from workers.scoring.backends.onnx_cuda import OnnxCudaBackend

        return OnnxCudaBackend(spec)
    return _onnx(spec, options)


def _onnx(spec: ModelSpec, options: dict[str, Any]) -> ScoringBackend:
    from workers.scoring.backends.onnx_cpu import OnnxCpuBackend

    return OnnxCpuBackend(spec, **_split_options("onnxruntime", options))
