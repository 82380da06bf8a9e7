"""Triton-style model repository: ``<repo>/<name>/<version>/model.onnx`` + ``<name>/config.toml``."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
REQUIRED_INPUTS = ("dense", "sparse")
INPUT_DTYPES = {"dense": "float32", "sparse": "int64"}


class ModelRepositoryError(ValueError):
    """A model repository entry is missing or malformed; the message names the file and field."""


@dataclass(frozen=True)
class TensorSpec:
    """dtype and dims of one model input or output (-1 marks the batch dimension)."""

    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelConfig:
    """The parsed ``config.toml`` of one model."""

    name: str
    backend: str
    max_batch_rows: int
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    sparse_features: tuple[str, ...]
    sparse_buckets: tuple[int, ...]
    dense_features: tuple[str, ...]
    max_wait_ms: float
    preferred_batch_rows: tuple[int, ...]
    instance_count: int
    intra_op_threads: int

    @property
    def output_name(self) -> str:
        """Name of the CTR output (the first output listed)."""
        return next(iter(self.outputs))


@dataclass(frozen=True)
class ModelSpec:
    """One loadable model version: its config, version number and ONNX path."""

    config: ModelConfig
    version: int
    path: Path

    @property
    def name(self) -> str:
        """The model's name."""
        return self.config.name


class _Fields:
    """Typed access to one TOML table, with errors that name the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: Path, prefix: str = "") -> None:
        self.data, self.source, self.prefix = data, source, prefix

    def _where(self, key: str) -> str:
        return f"{self.source}: '{self.prefix}{key}'"

    def raw(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ModelRepositoryError(f"{self._where(key)} is missing")
            return default
        return self.data[key]

    def table(self, key: str, default: Any = ...) -> _Fields:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            raise ModelRepositoryError(
                f"{self._where(key)} must be a table, got {type(value).__name__}"
            )
        return _Fields(value, self.source, f"{self.prefix}{key}.")

    def string(self, key: str, default: Any = ...) -> str:
        return self._typed(key, str, "a string", default)

    def integer(self, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self._typed(key, int, "an integer", default)
        if value < minimum:
            raise ModelRepositoryError(f"{self._where(key)} must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = ...) -> float:
        value = self._typed(key, (int, float), "a number", default)
        if value < 0:
            raise ModelRepositoryError(f"{self._where(key)} must be >= 0, got {value}")
        return float(value)

    def list_of(self, key: str, kind: type, what: str, default: Any = ...) -> tuple[Any, ...]:
        value = self.raw(key, default)
        bad = not isinstance(value, (list, tuple)) or any(
            not isinstance(v, kind) or isinstance(v, bool) for v in value
        )
        if bad:
            raise ModelRepositoryError(
                f"{self._where(key)} must be a list of {what}, got {value!r}"
            )
        return tuple(value)

    def _typed(self, key: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ModelRepositoryError(
                f"{self._where(key)} must be {what}, got {type(value).__name__} {value!r}"
            )
        return value


def _tensor_specs(fields: _Fields) -> dict[str, TensorSpec]:
    """Parses ``[inputs.<name>]`` or ``[outputs.<name>]`` tables."""
    specs: dict[str, TensorSpec] = {}
    for name in fields.data:
        table = fields.table(name)
        dtype = table.string("dtype")
        try:
            np.dtype(dtype)
        except TypeError as exc:
            raise ModelRepositoryError(f"{table._where('dtype')}: unknown dtype {dtype!r}") from exc
        dims = table.list_of("dims", int, "integers")
        if len(dims) < 1 or dims[0] != -1 or any(d < 1 for d in dims[1:]):
            raise ModelRepositoryError(
                f"{table._where('dims')} must start with -1 (the batch) followed by positive "
                f"sizes, got {list(dims)}"
            )
        specs[name] = TensorSpec(dtype=dtype, dims=dims)
    if not specs:
        raise ModelRepositoryError(f"{fields.source}: '{fields.prefix.rstrip('.')}' has no entries")
    return specs


def parse_config(data: Mapping[str, Any], source: Path) -> ModelConfig:
    """Builds a ModelConfig from parsed TOML, checking every field's presence and type."""
    top = _Fields(data, source)
    features = top.table("features")
    batching = top.table("batching", default={})
    instances = top.table("instances", default={})
    max_batch_rows = top.integer("max_batch_rows")
    batching_rows = batching.integer("max_batch_rows", default=max_batch_rows)
    if batching_rows != max_batch_rows:
        raise ModelRepositoryError(
            f"{source}: 'batching.max_batch_rows' ({batching_rows}) disagrees with "
            f"'max_batch_rows' ({max_batch_rows})"
        )
    config = ModelConfig(
        name=top.string("name"),
        backend=top.string("backend", default="onnxruntime"),
        max_batch_rows=max_batch_rows,
        inputs=_tensor_specs(top.table("inputs")),
        outputs=_tensor_specs(top.table("outputs")),
        sparse_features=features.list_of("sparse", str, "strings"),
        sparse_buckets=features.list_of("buckets", int, "integers"),
        dense_features=features.list_of("dense", str, "strings"),
        max_wait_ms=batching.number("max_wait_ms", default=2.0),
        preferred_batch_rows=tuple(
            sorted(batching.list_of("preferred_batch_rows", int, "integers", default=[]))
        ),
        instance_count=instances.integer("count", default=1),
        intra_op_threads=instances.integer("intra_op_threads", default=1),
    )
    _check_consistency(config, source)
    return config


def _check_consistency(config: ModelConfig, source: Path) -> None:
    """Cross-field checks: feature lists against input dims, buckets, batch sizes."""
    if len(config.sparse_buckets) != len(config.sparse_features):
        raise ModelRepositoryError(
            f"{source}: 'features.buckets' has {len(config.sparse_buckets)} entries but "
            f"'features.sparse' has {len(config.sparse_features)}"
        )
    if any(b < 1 for b in config.sparse_buckets):
        raise ModelRepositoryError(f"{source}: 'features.buckets' must all be >= 1")
    widths = {"dense": len(config.dense_features), "sparse": len(config.sparse_features)}
    for name in REQUIRED_INPUTS:
        spec = config.inputs.get(name)
        if spec is None:
            raise ModelRepositoryError(f"{source}: 'inputs.{name}' is missing")
        if spec.dtype != INPUT_DTYPES[name]:
            raise ModelRepositoryError(
                f"{source}: 'inputs.{name}.dtype' must be {INPUT_DTYPES[name]!r}, "
                f"got {spec.dtype!r}"
            )
        if spec.dims != (-1, widths[name]):
            raise ModelRepositoryError(
                f"{source}: 'inputs.{name}.dims' is {list(spec.dims)} but 'features.{name}' "
                f"lists {widths[name]} fields (expected [-1, {widths[name]}])"
            )
    if any(r < 1 or r > config.max_batch_rows for r in config.preferred_batch_rows):
        raise ModelRepositoryError(
            f"{source}: 'batching.preferred_batch_rows' must lie in [1, max_batch_rows="
            f"{config.max_batch_rows}], got {list(config.preferred_batch_rows)}"
        )


def read_config(path: Path) -> ModelConfig:
    """Reads and validates one ``config.toml``."""
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: config file is missing")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelRepositoryError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, path)


def _onnx_dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    """Static dims of an ONNX value (symbolic or unknown dims become -1)."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def _onnx_dtype(value_info: onnx.ValueInfoProto) -> str:
    elem = value_info.type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name


def check_onnx_matches(config: ModelConfig, model_path: Path) -> None:
    """Checks that the ONNX graph's inputs and outputs match the config's."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelRepositoryError(f"{model_path}: not a readable ONNX model: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    sections = (
        ("inputs", config.inputs, [i for i in model.graph.input if i.name not in initializers]),
        ("outputs", config.outputs, list(model.graph.output)),
    )
    for section, specs, values in sections:
        found = {v.name: v for v in values}
        for name, spec in specs.items():
            if name not in found:
                raise ModelRepositoryError(
                    f"{model_path}: config '{section}.{name}' is not a graph {section[:-1]} "
                    f"(graph has {sorted(found)})"
                )
            dtype, dims = _onnx_dtype(found[name]), _onnx_dims(found[name])
            if dtype != spec.dtype:
                raise ModelRepositoryError(
                    f"{model_path}: graph {section[:-1]} '{name}' is {dtype}, config says "
                    f"{spec.dtype}"
                )
            if len(dims) != len(spec.dims) or any(
                want != -1 and got != -1 and want != got for want, got in zip(spec.dims, dims)
            ):
                raise ModelRepositoryError(
                    f"{model_path}: graph {section[:-1]} '{name}' has dims {list(dims)}, config "
                    f"says {list(spec.dims)}"
                )
        extra = sorted(set(found) - set(specs)) if section == "inputs" else []
        if extra:
            raise ModelRepositoryError(
                f"{model_path}: graph inputs {extra} are not described in the config"
            )


def list_versions(repo_dir: Path, name: str) -> list[int]:
    """Version numbers of ``name`` that hold a model file, ascending."""
    model_dir = Path(repo_dir) / name
    if not model_dir.is_dir():
        raise ModelRepositoryError(f"{model_dir}: model directory is missing")
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILE).is_file()
    )


def load_model(repo_dir: Path, name: str, version: int | None = None) -> ModelSpec:
    """Loads and validates one model version (the highest present when ``version`` is None)."""
    model_dir = Path(repo_dir) / name
    versions = list_versions(repo_dir, name)
    if version is None:
        if not versions:
            raise ModelRepositoryError(
                f"{model_dir}: no version directory holds a {MODEL_FILE} (expected "
                f"{model_dir}/<version>/{MODEL_FILE})"
            )
        version = versions[-1]
    elif version not in versions:
        raise ModelRepositoryError(
            f"{model_dir / str(version) / MODEL_FILE}: model version {version} is missing "
            f"(present: {versions})"
        )
    config = read_config(model_dir / CONFIG_FILE)
    if config.name != name:
        raise ModelRepositoryError(
            f"{model_dir / CONFIG_FILE}: 'name' is {config.name!r} but the directory is {name!r}"
        )
    path = model_dir / str(version) / MODEL_FILE
    check_onnx_matches(config, path)
    return ModelSpec(config=config, version=version, path=path)
