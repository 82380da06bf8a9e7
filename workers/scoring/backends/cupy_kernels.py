"""CuPy kernels for the plan primitives: the fused embedding gather and bias+activation.

Imported only when the CuPy backend is used (it imports cupy at module level).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import cupy
import numpy as np

from workers.scoring.backends.plan_exec import FieldIndex

THREADS = 256
MAX_BLOCKS = 1 << 16  # grid-stride loop beyond this

# One launch gathers every field's embedding row into its columns of the Concat output.
# Elements are copied as raw bits (ELEM_T is an unsigned integer of the dtype's width), so the
# same kernel serves float32 and float16 tables. Ids follow ONNX Gather (negative ids count
# from the end); ids still outside [0, buckets) are clamped and counted in bad_ids[0].
_GATHER_SOURCE = r"""
extern "C" __global__ void adstream_embedding_concat(
    const long long* __restrict__ sparse, const long long n_rows, const int sparse_stride,
    const ELEM_T* __restrict__ table, const int dim,
    const int* __restrict__ sparse_column, const int* __restrict__ out_column,
    const long long* __restrict__ row_offset, const long long* __restrict__ buckets,
    const int n_fields, ELEM_T* __restrict__ out, const int out_stride,
    unsigned int* __restrict__ bad_ids)
{
    const long long per_row = (long long)n_fields * dim;
    const long long total = n_rows * per_row;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per_row;
        const int j = (int)(i - row * per_row);
        const int f = j / dim;
        const int d = j - f * dim;
        const long long b = buckets[f];
        long long id = sparse[row * sparse_stride + sparse_column[f]];
        if (id < 0) id += b;
        if (id < 0 || id >= b) {
            if (d == 0) atomicAdd(bad_ids, 1u);
            id = id < 0 ? 0 : b - 1;
        }
        out[row * out_stride + out_column[f] + d] = table[(row_offset[f] + id) * dim + d];
    }
}
"""

_ELEM_TYPES = {2: "unsigned short", 4: "unsigned int"}

_ACTIVATION_CODE = {
    "none": "y = (T)v;",
    "relu": "y = (T)(v > 0.0f ? v : 0.0f);",
    "sigmoid": "y = (T)(1.0f / (1.0f + expf(-v)));",
}


@cache
def gather_kernel(itemsize: int) -> cupy.RawKernel:
    """The fused gather for elements of ``itemsize`` bytes (2: float16, 4: float32)."""
    if itemsize not in _ELEM_TYPES:
        raise ValueError(f"embedding tables must be float16 or float32, got {itemsize}-byte items")
    source = _GATHER_SOURCE.replace("ELEM_T", _ELEM_TYPES[itemsize])
    return cupy.RawKernel(source, "adstream_embedding_concat")


@cache
def bias_act_kernel(activation: str, with_bias: bool) -> cupy.ElementwiseKernel:
    """``y = act(x + b)`` computed in float32 whatever T is (bias broadcast over rows)."""
    params = "T x, T b" if with_bias else "T x"
    value = "float v = (float)x + (float)b;" if with_bias else "float v = (float)x;"
    body = f"{value} {_ACTIVATION_CODE[activation]}"
    suffix = "_bias" if with_bias else ""
    return cupy.ElementwiseKernel(params, "T y", body, f"adstream_{activation}{suffix}")


class CupyOps:
    """The plan primitives on the current CuPy stream; none of them allocates device memory.

    ``gemm`` replaces ``cupy.matmul`` (CUDA graph capture uses a direct cuBLAS handle).
    """

    def __init__(self, gemm: Callable[[Any, Any, Any], None] | None = None) -> None:
        self._gemm = gemm

    def embedding_concat(
        self, sparse: Any, table: Any, index: FieldIndex, out: Any, bad: Any
    ) -> None:
        rows = sparse.shape[0]
        dim = table.shape[1]
        total = rows * index.count * dim
        if total == 0:
            return
        blocks = min(-(-total // THREADS), MAX_BLOCKS)
        args = (
            sparse,
            np.int64(rows),
            np.int32(sparse.shape[1]),
            table,
            np.int32(dim),
            index.sparse_column,
            index.out_column,
            index.row_offset,
            index.buckets,
            np.int32(index.count),
            out,
            np.int32(out.shape[1]),
            bad,
        )
        gather_kernel(table.dtype.itemsize)((blocks,), (THREADS,), args)

    def matmul(self, a: Any, w: Any, out: Any) -> None:
        if self._gemm is not None:
            self._gemm(a, w, out)
        else:
            cupy.matmul(a, w, out=out)

    def bias_act(self, x: Any, bias: Any | None, activation: str, out: Any) -> None:
        if bias is None:
            bias_act_kernel(activation, False)(x, out)
        else:
            bias_act_kernel(activation, True)(x, bias, out)

    def add(self, a: Any, b: Any, out: Any) -> None:
        cupy.add(a, b, out=out)

    def copy(self, dst: Any, src: Any) -> None:
        cupy.copyto(dst, src, casting="same_kind")

    def zero(self, a: Any) -> None:
        a.fill(0)
