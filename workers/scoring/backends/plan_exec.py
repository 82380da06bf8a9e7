"""Runs a compiled Plan over preallocated buffers through an array-ops object.

The same runner drives CuPy (``cupy_kernels.CupyOps``) and NumPy (``NumpyOps``, used by the
CPU tests and to measure the FP16 accuracy bound without a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from workers.scoring.backends.graph_plan import AddStep, AffineStep, ConcatStep, Plan

DENSE_F32 = "__dense_f32"  # float32 dense input when the compute dtype is not float32
SCORES_F32 = "__scores_f32"  # float32 scores when the compute dtype is not float32
BAD_IDS = "__bad_ids"  # uint32 [1]: ids outside their table, clamped by the gather
ALIGN = 256

# Stated accuracy of a plan against onnxruntime CPU (absolute, on the CTR output), for the
# reference model with standardised dense features. FP32: same math, FP32 accumulation (TF32
# off). FP16: float16 weights/activations, FP32 accumulation and FP32 bias/activation math.
# Measured on 10,000 rows on an H100: FP32 6.6e-7, FP16 7.1e-4.
FP32_MAX_ABS_ERROR = 1e-5
FP16_MAX_ABS_ERROR = 2e-3


@dataclass(frozen=True)
class BufferSpec:
    """One workspace buffer: per-row dims (or fixed dims when ``per_row`` is False)."""

    name: str
    dims: tuple[int, ...]
    dtype: np.dtype
    per_row: bool = True

    def shape(self, rows: int) -> tuple[int, ...]:
        """Full shape for a batch of ``rows``."""
        return (rows, *self.dims) if self.per_row else self.dims

    def nbytes(self, rows: int) -> int:
        """Bytes for a batch of ``rows``."""
        return int(np.prod(self.shape(rows), dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class FieldIndex:
    """Per-field lookup tables of one ConcatStep, as arrays of the executing module."""

    sparse_column: Any  # int32 [F]
    out_column: Any  # int32 [F]
    row_offset: Any  # int64 [F]
    buckets: Any  # int64 [F]
    count: int


@dataclass(frozen=True)
class PlanWeights:
    """A plan's weights converted to the compute dtype and placed by ``to_device``."""

    arrays: dict[str, Any]
    table: Any
    fields: dict[str, FieldIndex]
    nbytes: int


class ArrayOps(Protocol):
    """The primitive operations a plan needs; all write into preallocated ``out`` arrays."""

    def embedding_concat(
        self, sparse: Any, table: Any, index: FieldIndex, out: Any, bad: Any
    ) -> None: ...
    def matmul(self, a: Any, w: Any, out: Any) -> None: ...
    def bias_act(self, x: Any, bias: Any | None, activation: str, out: Any) -> None: ...
    def add(self, a: Any, b: Any, out: Any) -> None: ...
    def copy(self, dst: Any, src: Any) -> None: ...
    def zero(self, a: Any) -> None: ...


def buffer_specs(plan: Plan, dtype: np.dtype) -> list[BufferSpec]:
    """All buffers one batch needs: inputs, every step's output, scores and the id counter."""
    dtype = np.dtype(dtype)
    f32 = np.dtype(np.float32)
    specs = [BufferSpec(plan.sparse_input, (plan.n_sparse,), np.dtype(np.int64))]
    if dtype != f32:
        specs.append(BufferSpec(DENSE_F32, (plan.n_dense,), f32))
    specs.append(BufferSpec(plan.dense_input, (plan.n_dense,), dtype))
    specs += [BufferSpec(name, plan.dims[name], dtype) for name in plan.storage]
    if dtype != f32:
        specs.append(BufferSpec(SCORES_F32, plan.dims[plan.output], f32))
    specs.append(BufferSpec(BAD_IDS, (1,), np.dtype(np.uint32), per_row=False))
    return specs


def layout(specs: list[BufferSpec], rows: int) -> tuple[list[int], int]:
    """Byte offsets (each aligned to 256) of every buffer and the total size."""
    offsets, total = [], 0
    for spec in specs:
        offsets.append(total)
        total += -(-spec.nbytes(rows) // ALIGN) * ALIGN
    return offsets, total


def bind_views(
    plan: Plan,
    specs: list[BufferSpec],
    rows: int,
    view: Callable[[int, tuple[int, ...], np.dtype], Any],
) -> dict[str, Any]:
    """Creates every buffer as ``view(offset, shape, dtype)``, plus alias views and the
    ``"dense_f32"`` / ``"scores_f32"`` entry points (float32 input, flat float32 scores)."""
    offsets, _ = layout(specs, rows)
    views = {s.name: view(off, s.shape(rows), s.dtype) for s, off in zip(specs, offsets, strict=True)}
    for alias, source in plan.aliases.items():
        views[alias] = views[source].reshape((rows, *plan.dims[alias]))
    views["dense_f32"] = views.get(DENSE_F32, views[plan.dense_input])
    scores = views.get(SCORES_F32, views[plan.output])
    views["scores_f32"] = scores.reshape(rows)
    return views


def prepare_weights(plan: Plan, dtype: np.dtype, to_device: Callable[[np.ndarray], Any]
                    ) -> PlanWeights:
    """Converts a plan's weights to ``dtype`` and hands each array to ``to_device``."""
    dtype = np.dtype(dtype)
    arrays = {k: to_device(np.ascontiguousarray(v, dtype=dtype)) for k, v in plan.weights.items()}
    table = to_device(np.ascontiguousarray(plan.table, dtype=dtype))
    nbytes = plan.table.size * dtype.itemsize + sum(v.size for v in plan.weights.values()) * (
        dtype.itemsize
    )
    fields: dict[str, FieldIndex] = {}
    for step in plan.steps:
        if isinstance(step, ConcatStep) and step.fields:
            fs = step.fields
            index = FieldIndex(
                sparse_column=to_device(np.array([f.sparse_column for f in fs], np.int32)),
                out_column=to_device(np.array([f.out_column for f in fs], np.int32)),
                row_offset=to_device(np.array([f.row_offset for f in fs], np.int64)),
                buckets=to_device(np.array([f.buckets for f in fs], np.int64)),
                count=len(fs),
            )
            fields[step.output] = index
            nbytes += 24 * len(fs)
    return PlanWeights(arrays=arrays, table=table, fields=fields, nbytes=int(nbytes))


class PlanRunner:
    """Executes a plan's steps over bound views; never allocates when the ops do not."""

    def __init__(self, plan: Plan, weights: PlanWeights, ops: ArrayOps) -> None:
        self.plan, self.weights, self.ops = plan, weights, ops

    def run(self, views: dict[str, Any]) -> None:
        """Computes ``views["scores_f32"]`` from ``views["dense_f32"]`` and the sparse ids."""
        plan, ops, arrays = self.plan, self.ops, self.weights.arrays
        ops.zero(views[BAD_IDS])
        if DENSE_F32 in views:
            ops.copy(views[plan.dense_input], views[DENSE_F32])
        for step in plan.steps:
            out = views[step.output]
            if isinstance(step, ConcatStep):
                for name, column, width in step.copies:
                    ops.copy(out[:, column : column + width], views[name])
                if step.fields:
                    index = self.weights.fields[step.output]
                    table = self.weights.table
                    ops.embedding_concat(
                        views[plan.sparse_input], table, index, out, views[BAD_IDS]
                    )
            elif isinstance(step, AffineStep):
                bias = arrays[step.bias] if step.bias else None
                if step.weight is not None:
                    ops.matmul(views[step.input], arrays[step.weight], out)
                    if bias is not None or step.activation != "none":
                        ops.bias_act(out, bias, step.activation, out)
                else:
                    ops.bias_act(views[step.input], bias, step.activation, out)
            elif isinstance(step, AddStep):
                ops.add(views[step.left], views[step.right], out)
        if SCORES_F32 in views:
            ops.copy(views[SCORES_F32], views[plan.output])


class NumpyOps:
    """NumPy versions of the plan primitives; FP16 is emulated like the GPU computes it
    (float16 storage, float32 accumulation and activation math)."""

    def embedding_concat(
        self, sparse: np.ndarray, table: np.ndarray, index: FieldIndex, out: np.ndarray, bad: Any
    ) -> None:
        ids = sparse[:, index.sparse_column]
        ids = np.where(ids < 0, ids + index.buckets, ids)
        outside = (ids < 0) | (ids >= index.buckets)
        bad += np.uint32(np.count_nonzero(outside))
        rows = table[np.clip(ids, 0, index.buckets - 1) + index.row_offset]
        dim = table.shape[1]
        for f, column in enumerate(index.out_column):
            out[:, column : column + dim] = rows[:, f]

    def matmul(self, a: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        if out.dtype == np.float32:
            np.matmul(a, w, out=out)
        else:
            out[...] = np.matmul(a.astype(np.float32), w.astype(np.float32))

    def bias_act(self, x: np.ndarray, bias: np.ndarray | None, activation: str, out: Any) -> None:
        v = x.astype(np.float32)
        if bias is not None:
            v += bias.astype(np.float32)
        if activation == "relu":
            np.maximum(v, 0.0, out=v)
        elif activation == "sigmoid":
            with np.errstate(over="ignore"):
                v = np.reciprocal(np.exp(-v) + np.float32(1.0))
        out[...] = v

    def add(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        out[...] = a.astype(np.float32) + b.astype(np.float32)

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src

    def zero(self, a: np.ndarray) -> None:
        a[...] = 0


def run_plan_numpy(
    plan: Plan, dense: np.ndarray, sparse: np.ndarray, dtype: str = "float32"
) -> tuple[np.ndarray, int]:
    """Scores one batch with NumPy; returns (float32 [N] scores, count of clamped ids)."""
    rows = dense.shape[0]
    specs = buffer_specs(plan, np.dtype(dtype))
    _, total = layout(specs, rows)
    arena = np.zeros(total, dtype=np.uint8)

    def view(offset: int, shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return arena[offset : offset + size].view(dt).reshape(shape)

    views = bind_views(plan, specs, rows, view)
    weights = prepare_weights(plan, np.dtype(dtype), lambda a: a)
    views["dense_f32"][...] = dense
    views[plan.sparse_input][...] = sparse
    PlanRunner(plan, weights, NumpyOps()).run(views)
    return views["scores_f32"].copy(), int(views[BAD_IDS][0])
