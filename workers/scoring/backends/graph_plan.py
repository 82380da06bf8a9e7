"""Compiles a CTR model's ONNX graph into a short plan of fused steps (pure Python, no CUDA).

The CuPy backend runs the plan; this module decides whether it can. Recognised pattern:
``Gather(sparse, scalar column, axis=1)`` feeding ``Gather(table, ids, axis=0)`` is an embedding
lookup; every lookup feeding a ``Concat`` becomes one fused gather into that Concat's output.
``Gemm``/``MatMul`` + ``Add`` + ``Relu``/``Sigmoid`` chains become single affine steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from workers.scoring.backends.base import UnsupportedModelError

SUPPORTED_OPS = frozenset(
    {
        "Gather",
        "Concat",
        "Gemm",
        "MatMul",
        "Add",
        "Relu",
        "Sigmoid",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Constant",
    }
)
ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid"}


@dataclass(frozen=True)
class EmbeddingField:
    """One embedding lookup fused into a Concat: sparse column -> rows of one table."""

    sparse_column: int
    table: str
    buckets: int
    row_offset: int
    out_column: int


@dataclass(frozen=True)
class ConcatStep:
    """Writes embedding rows and copies of activations into column ranges of ``output``."""

    output: str
    fields: tuple[EmbeddingField, ...]
    copies: tuple[tuple[str, int, int], ...]  # (input tensor, first output column, width)


@dataclass(frozen=True)
class AffineStep:
    """``output = activation(input @ weight + bias)``; weight and bias are optional."""

    input: str
    output: str
    weight: str | None
    bias: str | None
    activation: str  # "none", "relu" or "sigmoid"


@dataclass(frozen=True)
class AddStep:
    """Elementwise sum of two activations of the same shape."""

    left: str
    right: str
    output: str


Step = ConcatStep | AffineStep | AddStep


@dataclass(frozen=True)
class Plan:
    """A compiled CTR model: steps over named tensors plus float32 weights.

    ``dims`` gives every activation tensor's per-row shape; ``aliases`` maps view tensors
    (Reshape, Flatten, ...) to the tensor whose storage they view.
    """

    dense_input: str
    sparse_input: str
    n_dense: int
    n_sparse: int
    output: str
    dims: dict[str, tuple[int, ...]]
    aliases: dict[str, str]
    steps: tuple[Step, ...]
    weights: dict[str, np.ndarray]
    table: np.ndarray
    embedding_dim: int

    @property
    def storage(self) -> list[str]:
        """Tensors the steps write (each needs a buffer), in step order."""
        return [step.output for step in self.steps]

    @property
    def weight_bytes(self) -> int:
        """Bytes of float32 weights, embedding tables included."""
        return int(self.table.nbytes + sum(w.nbytes for w in self.weights.values()))


def _unsupported(node: onnx.NodeProto, label: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{node.op_type} node {label!r}: {why}", op_type=node.op_type, node=label
    )


def check_operators(model: onnx.ModelProto) -> None:
    """Raises UnsupportedModelError naming the first operator the CuPy backend lacks."""
    for i, node in enumerate(model.graph.node):
        label = node.name or f"#{i}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            domain = f" (domain {node.domain!r})" if node.domain else ""
            raise UnsupportedModelError(
                f"operator {node.op_type!r}{domain} in node {label!r} is not supported by the "
                f"CuPy backend (it supports {', '.join(sorted(SUPPORTED_OPS))})",
                op_type=node.op_type,
                node=label,
            )


class _Compiler:
    """Walks the (topologically sorted) ONNX nodes once and emits plan steps."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.columns: dict[str, int] = {}  # Gather(sparse, i) outputs
        self.lookups: dict[str, tuple[str, int]] = {}  # embedding outputs -> (table, column)
        self.dims: dict[str, tuple[int, ...]] = {}
        self.aliases: dict[str, str] = {}
        self.steps: list[Step] = []
        self.weights: dict[str, np.ndarray] = {}
        self.tables: dict[str, int] = {}  # table name -> row offset
        self.table_arrays: list[np.ndarray] = []
        self.total_rows = 0
        self.embedding_dim = 0
        self._inputs(graph)

    def _inputs(self, graph: onnx.GraphProto) -> None:
        dense, sparse = [], []
        for value in graph.input:
            if value.name in self.inits:
                continue
            ttype = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
            if len(dims) != 2 or dims[1] < 1:
                raise UnsupportedModelError(
                    f"graph input {value.name!r} must be 2-D [N, width] with a static width, "
                    f"got dims {dims}"
                )
            if ttype.elem_type == onnx.TensorProto.FLOAT:
                dense.append((value.name, dims[1]))
            elif ttype.elem_type == onnx.TensorProto.INT64:
                sparse.append((value.name, dims[1]))
            else:
                raise UnsupportedModelError(
                    f"graph input {value.name!r} must be float32 (dense) or int64 (sparse)"
                )
        if len(dense) != 1 or len(sparse) != 1:
            raise UnsupportedModelError(
                "the CuPy backend needs exactly one float32 dense input and one int64 sparse "
                f"input, got dense={dense} sparse={sparse}"
            )
        (self.dense_input, self.n_dense), (self.sparse_input, self.n_sparse) = dense[0], sparse[0]
        self.dims[self.dense_input] = (self.n_dense,)

    # -- helpers -------------------------------------------------------------------------
    def _activation(self, node: onnx.NodeProto, label: str, name: str) -> tuple[int, ...]:
        """Per-row dims of an activation tensor consumed by ``node``."""
        if name in self.dims:
            return self.dims[name]
        if name in self.lookups:
            why = "the CuPy backend fuses embedding lookups only into a Concat"
            raise _unsupported(node, label, f"consumes embedding lookup {name!r}; {why}")
        if name in self.columns or name == self.sparse_input:
            why = f"consumes the sparse ids {name!r}; only embedding lookups may use them"
            raise _unsupported(node, label, why)
        if name in self.inits:
            raise _unsupported(node, label, f"needs an activation where {name!r} is a constant")
        raise _unsupported(node, label, f"input {name!r} is not produced by any earlier node")

    def _const(self, node: onnx.NodeProto, label: str, name: str) -> np.ndarray:
        if name not in self.inits:
            raise _unsupported(node, label, f"input {name!r} must be an initializer/constant")
        return self.inits[name]

    def _weight(self, name: str, value: np.ndarray) -> str:
        self.weights[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    def _alias(self, out: str, source: str, dims: tuple[int, ...]) -> None:
        self.aliases[out] = self.aliases.get(source, source)
        self.dims[out] = dims

    @staticmethod
    def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
        for attr in node.attribute:
            if attr.name == name:
                return onnx.helper.get_attribute_value(attr)
        return default

    # -- operators ------------------------------------------------------------------------
    def node(self, node: onnx.NodeProto, label: str) -> None:
        getattr(self, f"_op_{node.op_type.lower()}")(node, label)

    def _op_constant(self, node: onnx.NodeProto, label: str) -> None:
        value = self._attr(node, "value", None)
        if value is None:
            raise _unsupported(node, label, "only the 'value' attribute is supported")
        self.inits[node.output[0]] = numpy_helper.to_array(value)

    def _op_gather(self, node: onnx.NodeProto, label: str) -> None:
        data, indices = node.input[0], node.input[1]
        axis = int(self._attr(node, "axis", 0))
        if data == self.sparse_input and indices in self.inits and axis in (1, -1):
            column = self.inits[indices]
            if column.ndim != 0 or not -self.n_sparse <= int(column) < self.n_sparse:
                why = f"the column index must be a scalar in [0, {self.n_sparse})"
                raise _unsupported(node, label, why)
            self.columns[node.output[0]] = int(column) % self.n_sparse
            return
        if data in self.inits and indices in self.columns and axis == 0:
            self._table(node, label, data)
            self.lookups[node.output[0]] = (data, self.columns[indices])
            return
        raise _unsupported(
            node,
            label,
            "only embedding lookups are supported: Gather(sparse input, scalar column, axis=1) "
            "feeding Gather(table initializer, ids, axis=0)",
        )

    def _table(self, node: onnx.NodeProto, label: str, name: str) -> None:
        if name in self.tables:
            return
        table = self.inits[name]
        if table.ndim != 2 or table.dtype.kind != "f":
            raise _unsupported(node, label, f"table {name!r} must be a 2-D float initializer")
        if self.embedding_dim and table.shape[1] != self.embedding_dim:
            why = (
                f"table {name!r} has width {table.shape[1]} but earlier tables have "
                f"{self.embedding_dim}; the fused gather needs one width"
            )
            raise _unsupported(node, label, why)
        self.embedding_dim = table.shape[1]
        self.tables[name] = self.total_rows
        self.table_arrays.append(np.asarray(table, dtype=np.float32))
        self.total_rows += table.shape[0]

    def _op_concat(self, node: onnx.NodeProto, label: str) -> None:
        fields: list[EmbeddingField] = []
        copies: list[tuple[str, int, int]] = []
        column = 0
        for name in node.input:
            if name in self.lookups:
                table, sparse_column = self.lookups[name]
                buckets = self.inits[table].shape[0]
                offset = self.tables[table]
                fields.append(EmbeddingField(sparse_column, table, buckets, offset, column))
                column += self.embedding_dim
                continue
            dims = self._activation(node, label, name)
            if len(dims) != 1:
                raise _unsupported(node, label, f"input {name!r} must be 2-D [N, width]")
            copies.append((name, column, dims[0]))
            column += dims[0]
        if int(self._attr(node, "axis", 0)) not in (1, -1):
            raise _unsupported(node, label, "only axis=1 (columns of [N, width] tensors)")
        self.steps.append(ConcatStep(node.output[0], tuple(fields), tuple(copies)))
        self.dims[node.output[0]] = (column,)

    def _dense_input(self, node: onnx.NodeProto, label: str, name: str) -> int:
        dims = self._activation(node, label, name)
        if len(dims) != 1:
            raise _unsupported(node, label, f"input {name!r} must be 2-D [N, width]")
        return dims[0]

    def _affine(self, node: onnx.NodeProto, label: str, w: np.ndarray, bias: str | None) -> None:
        width_in = self._dense_input(node, label, node.input[0])
        if w.ndim != 2 or w.shape[0] != width_in:
            why = f"weight shape {list(w.shape)} does not fit input width {width_in}"
            raise _unsupported(node, label, why)
        out = node.output[0]
        weight = self._weight(f"{out}:weight", w)
        self.steps.append(AffineStep(node.input[0], out, weight, bias, "none"))
        self.dims[out] = (w.shape[1],)

    def _bias(self, node: onnx.NodeProto, label: str, name: str, value: np.ndarray, width: int
              ) -> str:
        if value.size not in (1, width) or (value.ndim == 2 and value.shape[0] != 1):
            why = f"bias {list(value.shape)} does not broadcast over [N, {width}] per row"
            raise _unsupported(node, label, why)
        return self._weight(name, np.broadcast_to(value.reshape(-1), (width,)))

    def _op_gemm(self, node: onnx.NodeProto, label: str) -> None:
        if int(self._attr(node, "transA", 0)):
            raise _unsupported(node, label, "transA=1 is not supported")
        b = self._const(node, label, node.input[1]).astype(np.float32)
        alpha = float(self._attr(node, "alpha", 1.0))
        beta = float(self._attr(node, "beta", 1.0))
        w = (b.T if int(self._attr(node, "transB", 0)) else b) * alpha
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self._const(node, label, node.input[2]).astype(np.float32) * beta
            bias = self._bias(node, label, f"{node.output[0]}:bias", c, w.shape[1])
        self._affine(node, label, w, bias)

    def _op_matmul(self, node: onnx.NodeProto, label: str) -> None:
        self._affine(node, label, self._const(node, label, node.input[1]), None)

    def _op_add(self, node: onnx.NodeProto, label: str) -> None:
        left, right = node.input[0], node.input[1]
        if left in self.inits and right not in self.inits:
            left, right = right, left
        out = node.output[0]
        if right in self.inits:
            width = self._dense_input(node, label, left)
            bias = self._bias(node, label, f"{out}:bias", self.inits[right], width)
            self.steps.append(AffineStep(left, out, None, bias, "none"))
            self.dims[out] = (width,)
            return
        dims = self._activation(node, label, left)
        if self._activation(node, label, right) != dims:
            raise _unsupported(node, label, "both inputs must have the same shape")
        self.steps.append(AddStep(left, right, out))
        self.dims[out] = dims

    def _op_relu(self, node: onnx.NodeProto, label: str) -> None:
        self._act(node, label)

    def _op_sigmoid(self, node: onnx.NodeProto, label: str) -> None:
        self._act(node, label)

    def _act(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        activation = ACTIVATIONS[node.op_type]
        self.steps.append(AffineStep(node.input[0], node.output[0], None, None, activation))
        self.dims[node.output[0]] = dims

    def _op_identity(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        self._alias(node.output[0], node.input[0], dims)

    def _op_flatten(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        if int(self._attr(node, "axis", 1)) != 1:
            raise _unsupported(node, label, "only axis=1 keeps the batch dimension first")
        self._alias(node.output[0], node.input[0], (int(np.prod(dims)),))

    def _op_reshape(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        shape = [int(s) for s in self._const(node, label, node.input[1]).reshape(-1)]
        if not shape or shape[0] not in (0, -1) or int(self._attr(node, "allowzero", 0)):
            raise _unsupported(node, label, "the new shape must keep the batch first (0 or -1)")
        new = [dims[i - 1] if s == 0 and i - 1 < len(dims) else s for i, s in enumerate(shape)][1:]
        size, known = int(np.prod(dims)), int(np.prod([s for s in new if s != -1]))
        new = [size // known if s == -1 else s for s in new]
        if new.count(-1) or int(np.prod(new)) != size:
            raise _unsupported(node, label, f"cannot reshape per-row dims {dims} to {shape}")
        self._alias(node.output[0], node.input[0], tuple(new))

    def _axes(self, node: onnx.NodeProto, label: str) -> list[int] | None:
        if len(node.input) > 1 and node.input[1]:
            return [int(a) for a in self._const(node, label, node.input[1]).reshape(-1)]
        axes = self._attr(node, "axes", None)
        return None if axes is None else [int(a) for a in axes]

    def _op_squeeze(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        axes = self._axes(node, label)
        rank = len(dims) + 1
        axes = [i + 1 for i, d in enumerate(dims) if d == 1] if axes is None else axes
        axes = [a % rank for a in axes]
        if 0 in axes or any(dims[a - 1] != 1 for a in axes):
            raise _unsupported(node, label, f"can only squeeze size-1 non-batch axes of {dims}")
        new = tuple(d for i, d in enumerate(dims) if i + 1 not in axes)
        self._alias(node.output[0], node.input[0], new)

    def _op_unsqueeze(self, node: onnx.NodeProto, label: str) -> None:
        dims = self._activation(node, label, node.input[0])
        axes = self._axes(node, label)
        rank = len(dims) + 1 + len(axes or [])
        axes = sorted(a % rank for a in axes or [])
        if not axes or 0 in axes:
            raise _unsupported(node, label, "can only insert non-batch axes")
        new = list(dims)
        for a in axes:
            new.insert(a - 1, 1)
        self._alias(node.output[0], node.input[0], tuple(new))

    # -- result ------------------------------------------------------------------------------
    def plan(self, graph: onnx.GraphProto) -> Plan:
        if len(graph.output) != 1:
            raise UnsupportedModelError(
                f"the CuPy backend needs exactly one graph output, got {len(graph.output)}"
            )
        output = graph.output[0].name
        if output not in self.dims or output == self.dense_input:
            raise UnsupportedModelError(f"graph output {output!r} is not a computed activation")
        if int(np.prod(self.dims[output])) != 1:
            raise UnsupportedModelError(
                f"graph output {output!r} must hold one score per row, got per-row dims "
                f"{self.dims[output]}"
            )
        steps = _fuse_affine(self.steps, self.weights, self.aliases, output)
        used = {s.weight for s in steps if isinstance(s, AffineStep)}
        used |= {s.bias for s in steps if isinstance(s, AffineStep)}
        if self.table_arrays:
            table = np.ascontiguousarray(np.concatenate(self.table_arrays, axis=0))
        else:
            table = np.zeros((0, 0), dtype=np.float32)
        return Plan(
            dense_input=self.dense_input,
            sparse_input=self.sparse_input,
            n_dense=self.n_dense,
            n_sparse=self.n_sparse,
            output=output,
            dims=dict(self.dims),
            aliases=dict(self.aliases),
            steps=tuple(steps),
            weights={k: v for k, v in self.weights.items() if k in used},
            table=table,
            embedding_dim=self.embedding_dim,
        )


def _fuse_affine(
    steps: list[Step], weights: dict[str, np.ndarray], aliases: dict[str, str], output: str
) -> list[Step]:
    """Merges bias-only / activation-only steps into the affine step that feeds them."""
    uses: Counter[str] = Counter([aliases.get(output, output)])
    for step in steps:
        inputs = [step.input] if isinstance(step, AffineStep) else []
        if isinstance(step, AddStep):
            inputs = [step.left, step.right]
        if isinstance(step, ConcatStep):
            inputs = [name for name, _, _ in step.copies]
        uses.update(aliases.get(name, name) for name in inputs)
    fused: list[Step] = []
    producer: dict[str, int] = {}
    for step in steps:
        if isinstance(step, AffineStep) and step.weight is None and step.input in producer:
            index = producer[step.input]
            prev = fused[index]
            if (
                isinstance(prev, AffineStep)
                and prev.activation == "none"
                and uses[prev.output] == 1
            ):
                bias = prev.bias or step.bias
                if prev.bias and step.bias:
                    bias = f"{step.output}:bias+"
                    weights[bias] = weights[prev.bias] + weights[step.bias]
                merged = replace(prev, output=step.output, bias=bias, activation=step.activation)
                del producer[prev.output]
                fused[index] = merged
                producer[step.output] = index
                continue
        producer[step.output] = len(fused)
        fused.append(step)
    return fused


def compile_model(model: onnx.ModelProto) -> Plan:
    """Compiles an in-memory ONNX model; raises UnsupportedModelError if it cannot run."""
    check_operators(model)
    compiler = _Compiler(model)
    for i, node in enumerate(model.graph.node):
        compiler.node(node, node.name or f"#{i}")
    return compiler.plan(model.graph)


def compile_plan(model_path: Path) -> Plan:
    """Loads ``model_path`` and compiles it (see compile_model)."""
    return compile_model(onnx.load(str(model_path)))
