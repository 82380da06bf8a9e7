"""cuBLAS GEMMs through ctypes, for CUDA graph capture.

CuPy's cuBLAS wrappers refuse to run while a stream is capturing (NotImplementedError), so
the graph path calls ``cublasGemmEx`` itself on a handle of its own, bound to the backend's
stream. The library is the one CuPy already loaded into the process.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

CUBLAS_OP_N = 0
CUBLAS_COMPUTE_32F = 68  # FP32 accumulation; no TF32 (the handle keeps CUBLAS_DEFAULT_MATH)
CUBLAS_GEMM_DEFAULT = -1
CUDA_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 2}  # CUDA_R_32F, CUDA_R_16F


def _loaded_cublas_path() -> str | None:
    """Path of the libcublas already mapped into this process, if any."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libcublas.so"):
                    return path
    except OSError:
        return None
    return None


def load_cublas() -> ctypes.CDLL:
    """The process's libcublas (loading it through CuPy first)."""
    import cupy

    cupy.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    candidates = [_loaded_cublas_path()]
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        candidates.append(load_nvidia_dynamic_lib("cublas").abs_path)
    except Exception:  # optional helper of CuPy >= 14
        pass
    candidates += ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    errors = []
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
            continue
        _declare(lib)
        return lib
    raise OSError(f"cannot load libcublas: {'; '.join(errors) or 'no candidate found'}")


def _declare(lib: ctypes.CDLL) -> None:
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
    lib.cublasDestroy_v2.argtypes = [vp]
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
    for fn in (lib.cublasCreate_v2, lib.cublasDestroy_v2, lib.cublasSetStream_v2):
        fn.restype = i
    lib.cublasGemmEx.restype = i


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with cublasStatus_t {status}")


class CublasHandle:
    """One cuBLAS handle bound to one stream; ``gemm`` computes ``out = a @ w`` (row-major)."""

    def __init__(self, stream_ptr: int) -> None:
        self._lib = load_cublas()
        self._handle = ctypes.c_void_p()
        _check(self._lib.cublasCreate_v2(ctypes.byref(self._handle)), "cublasCreate")
        _check(self._lib.cublasSetStream_v2(self._handle, stream_ptr), "cublasSetStream")
        self._one = ctypes.c_float(1.0)
        self._zero = ctypes.c_float(0.0)

    def gemm(self, a: Any, w: Any, out: Any) -> None:
        """``out[m, n] = a[m, k] @ w[k, n]`` for C-contiguous float32/float16 CuPy arrays."""
        m, k = a.shape
        n = w.shape[1]
        if w.shape[0] != k or out.shape != (m, n):
            raise ValueError(f"gemm shapes do not fit: {a.shape} @ {w.shape} -> {out.shape}")
        if not (a.flags.c_contiguous and w.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("gemm needs C-contiguous operands")
        if not a.dtype == w.dtype == out.dtype or a.dtype not in CUDA_TYPES:
            raise ValueError(f"gemm needs one float32/float16 dtype, got {a.dtype}/{w.dtype}")
        dt = CUDA_TYPES[a.dtype]
        # Row-major out = a @ w is column-major out^T = w^T @ a^T: swap the operands.
        status = self._lib.cublasGemmEx(
            self._handle,
            CUBLAS_OP_N,
            CUBLAS_OP_N,
            n,
            m,
            k,
            ctypes.addressof(self._one),
            w.data.ptr,
            dt,
            n,
            a.data.ptr,
            dt,
            k,
            ctypes.addressof(self._zero),
            out.data.ptr,
            dt,
            n,
            CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT,
        )
        _check(status, "cublasGemmEx")

    def close(self) -> None:
        """Destroys the handle."""
        if self._handle:
            self._lib.cublasDestroy_v2(self._handle)
            self._handle = ctypes.c_void_p()
