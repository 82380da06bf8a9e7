"""Triton-style model repository: ``<repo>/<name>/<version>/model.onnx`` + ``<name>/config.toml``."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx

from pipeline.config import ConfigError

T = TypeVar("T")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
FEATURE_OUTPUTS = ("dense", "sparse")
"""What the feature configuration produces: float32 [N, dense] and int64 [N, sparse]."""
INPUT_DTYPES = {"dense": ("float32", "float16"), "sparse": ("int64", "int32")}
"""The dtypes a model input may take from each feature output (cast once per batch)."""


class ModelRepositoryError(ConfigError):
    """A model repository entry is missing or malformed; the message names the file and field."""


@dataclass(frozen=True)
class TensorSpec:
    """dtype and dims of one model input or output (-1 marks the batch dimension).

    An input also says what fills it: ``source`` (a feature output, ``dense`` or ``sparse``)
    and ``fields``, the feature columns it takes, in order."""

    dtype: str
    dims: tuple[int, ...]
    source: str = ""
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: the ``latest`` N, or the ``specific`` ones."""

    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, present: list[int]) -> list[int]:
        """The versions to serve out of ``present`` (ascending)."""
        if self.specific:
            return [v for v in present if v in self.specific]
        return present[-self.latest:]

    def describe(self) -> str:
        if self.specific:
            return f"specific {list(self.specific)}"
        return "latest" if self.latest == 1 else f"latest {self.latest}"


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
    version_policy: VersionPolicy = VersionPolicy()

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

    def _typed(self, key: str, kind: type[T] | tuple[type[T], ...], what: str, default: Any
               ) -> T:
        value = self.raw(key, default)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ModelRepositoryError(
                f"{self._where(key)} must be {what}, got {type(value).__name__} {value!r}"
            )
        return value


def _tensor_spec(table: _Fields, name: str, is_input: bool) -> TensorSpec:
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
    if not is_input:
        return TensorSpec(dtype=dtype, dims=dims)
    source = table.string("from", default=name if name in FEATURE_OUTPUTS else ...)
    if source not in FEATURE_OUTPUTS:
        raise ModelRepositoryError(
            f"{table._where('from')} must be one of {list(FEATURE_OUTPUTS)} (what the feature "
            f"configuration produces), got {source!r}"
        )
    if dtype not in INPUT_DTYPES[source]:
        raise ModelRepositoryError(
            f"{table._where('dtype')} is {dtype!r}; an input from {source!r} takes one of "
            f"{list(INPUT_DTYPES[source])}"
        )
    fields = table.list_of("fields", str, "strings", default=())
    return TensorSpec(dtype=dtype, dims=dims, source=source, fields=fields)


def _tensor_specs(fields: _Fields, is_input: bool) -> dict[str, TensorSpec]:
    """Parses ``[inputs.<name>]`` or ``[outputs.<name>]`` tables."""
    specs = {name: _tensor_spec(fields.table(name), name, is_input) for name in fields.data}
    if not specs:
        raise ModelRepositoryError(f"{fields.source}: '{fields.prefix.rstrip('.')}' has no entries")
    return specs


def _either(a: _Fields, a_key: str, b: _Fields, b_key: str) -> tuple[_Fields, str] | None:
    """Where a setting with two accepted spellings (ours, Triton's) is given, if anywhere."""
    if a_key in a.data and b_key in b.data:
        raise ModelRepositoryError(
            f"{a._where(a_key)} and '{b.prefix}{b_key}' name the same setting; give one"
        )
    if a_key in a.data:
        return a, a_key
    if b_key in b.data:
        return b, b_key
    return None


def _max_wait_ms(batching: _Fields, dynamic: _Fields) -> float:
    found = [(f, k) for f, k in ((batching, "max_wait_ms"),
                                 (dynamic, "max_queue_delay_microseconds"),
                                 (dynamic, "max_queue_delay_ms")) if k in f.data]
    if len(found) > 1:
        names = " and ".join(f"'{f.prefix}{k}'" for f, k in found)
        raise ModelRepositoryError(f"{batching.source}: {names} name the same setting; give one")
    if not found:
        return 2.0
    f, k = found[0]
    value = f.number(k)
    return value / 1000 if k.endswith("microseconds") else value


def _version_policy(policy: _Fields) -> VersionPolicy:
    keys = set(policy.data)
    if keys - {"latest", "specific"} or len(keys) > 1:
        raise ModelRepositoryError(
            f"{policy.source}: 'version_policy' takes one of 'latest = N' or "
            f"'specific = [versions]', got {sorted(keys)}"
        )
    if "specific" in keys:
        versions = policy.list_of("specific", int, "integers")
        if not versions or any(v < 1 for v in versions):
            raise ModelRepositoryError(
                f"{policy._where('specific')} must list versions >= 1, got {list(versions)}"
            )
        return VersionPolicy(specific=tuple(sorted(set(versions))))
    return VersionPolicy(latest=policy.integer("latest", default=1))


def parse_config(data: Mapping[str, Any], source: Path) -> ModelConfig:
    """Builds a ModelConfig from parsed TOML, checking every field's presence and type.

    Triton's names are accepted too: ``max_batch_size``, ``[dynamic_batching]``
    (``preferred_batch_size``, ``max_queue_delay_microseconds``) and ``[instance_group]``
    (``count``); see docs/models.md."""
    top = _Fields(data, source)
    features = top.table("features")
    batching = top.table("batching", default={})
    dynamic = top.table("dynamic_batching", default={})
    instances = top.table("instances", default={})
    group = top.table("instance_group", default={})
    where = _either(top, "max_batch_rows", top, "max_batch_size")
    if where is None:
        raise ModelRepositoryError(
            f"{source}: 'max_batch_rows' is missing (Triton's 'max_batch_size' is accepted too)"
        )
    max_batch_rows = where[0].integer(where[1])
    batching_rows = batching.integer("max_batch_rows", default=max_batch_rows)
    if batching_rows != max_batch_rows:
        raise ModelRepositoryError(
            f"{source}: 'batching.max_batch_rows' ({batching_rows}) disagrees with "
            f"'{where[1]}' ({max_batch_rows})"
        )
    preferred = _either(batching, "preferred_batch_rows", dynamic, "preferred_batch_size")
    count = _either(instances, "count", group, "count")
    config = ModelConfig(
        name=top.string("name"),
        backend=top.string("backend", default="onnxruntime"),
        max_batch_rows=max_batch_rows,
        inputs=_tensor_specs(top.table("inputs"), is_input=True),
        outputs=_tensor_specs(top.table("outputs"), is_input=False),
        sparse_features=features.list_of("sparse", str, "strings"),
        sparse_buckets=features.list_of("buckets", int, "integers"),
        dense_features=features.list_of("dense", str, "strings"),
        max_wait_ms=_max_wait_ms(batching, dynamic),
        preferred_batch_rows=tuple(sorted(
            preferred[0].list_of(preferred[1], int, "integers") if preferred else ())),
        instance_count=count[0].integer("count") if count else 1,
        intra_op_threads=instances.integer("intra_op_threads", default=1),
        version_policy=_version_policy(top.table("version_policy", default={})),
    )
    config = _resolve_fields(config, source)
    _check_consistency(config, source)
    return config


def _resolve_fields(config: ModelConfig, source: Path) -> ModelConfig:
    """Fills each input's ``fields`` (default: every column of its feature output) and checks
    that the named ones exist there."""
    produced = {"dense": config.dense_features, "sparse": config.sparse_features}
    inputs: dict[str, TensorSpec] = {}
    for name, spec in config.inputs.items():
        columns = produced[spec.source]
        unknown = [f for f in spec.fields if f not in columns]
        if unknown:
            raise ModelRepositoryError(
                f"{source}: 'inputs.{name}.fields' names {unknown}, which 'features."
                f"{spec.source}' does not list"
            )
        inputs[name] = replace(spec, fields=spec.fields or columns)
    return replace(config, inputs=inputs)


def _check_consistency(config: ModelConfig, source: Path) -> None:
    """Cross-field checks: feature lists against input dims, buckets, batch sizes."""
    if len(config.sparse_buckets) != len(config.sparse_features):
        raise ModelRepositoryError(
            f"{source}: 'features.buckets' has {len(config.sparse_buckets)} entries but "
            f"'features.sparse' has {len(config.sparse_features)}"
        )
    if any(b < 1 for b in config.sparse_buckets):
        raise ModelRepositoryError(f"{source}: 'features.buckets' must all be >= 1")
    buckets = dict(zip(config.sparse_features, config.sparse_buckets, strict=True))
    for name, spec in config.inputs.items():
        width = len(spec.fields)
        if spec.dims != (-1, width):
            raise ModelRepositoryError(
                f"{source}: 'inputs.{name}.dims' is {list(spec.dims)} but it takes {width} "
                f"'features.{spec.source}' fields (expected [-1, {width}])"
            )
        if spec.dtype == "int32" and any(buckets[f] > 2**31 for f in spec.fields):
            raise ModelRepositoryError(
                f"{source}: 'inputs.{name}.dtype' is int32 but a field it takes has more than "
                f"2**31 buckets"
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


def _describe(dtype: str, dims: tuple[int, ...]) -> str:
    return f"{dtype} [{', '.join('B' if d == -1 else str(d) for d in dims)}]"


def check_onnx_matches(config: ModelConfig, model_path: Path) -> None:
    """Checks that the ONNX graph's inputs and outputs match the config's.

    Every mismatch is found, one line each naming the tensor, what the config expects and
    what the graph has; they are raised together."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelRepositoryError(f"{model_path}: not a readable ONNX model: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    sections = (
        ("input", config.inputs, [i for i in model.graph.input if i.name not in initializers]),
        ("output", config.outputs, list(model.graph.output)),
    )
    problems: list[str] = []
    for kind, specs, values in sections:
        found = {v.name: v for v in values}
        for name, spec in specs.items():
            expected = _describe(spec.dtype, spec.dims)
            if name not in found:
                problems.append(
                    f"{model_path}: config '{kind}s.{name}' is not a graph {kind} (expected "
                    f"{expected}; graph has {sorted(found)})"
                )
                continue
            dtype, dims = _onnx_dtype(found[name]), _onnx_dims(found[name])
            if dtype != spec.dtype or len(dims) != len(spec.dims) or any(
                want != -1 and got != -1 and want != got for want, got in zip(spec.dims, dims, strict=True)
            ):
                problems.append(
                    f"{model_path}: {kind} '{name}': config expects {expected}, graph has "
                    f"{_describe(dtype, dims)}"
                )
        extra = sorted(set(found) - set(specs)) if kind == "input" else []
        for name in extra:
            has = _describe(_onnx_dtype(found[name]), _onnx_dims(found[name]))
            problems.append(
                f"{model_path}: graph input '{name}' ({has}) is not described in the config "
                f"(add [inputs.{name}] with from = 'dense' or 'sparse')"
            )
    if problems:
        raise ModelRepositoryError("\n".join(problems))


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


def model_config(repo_dir: Path, name: str) -> ModelConfig:
    """The validated ``config.toml`` of model ``name``."""
    model_dir = Path(repo_dir) / name
    config = read_config(model_dir / CONFIG_FILE)
    if config.name != name:
        raise ModelRepositoryError(
            f"{model_dir / CONFIG_FILE}: 'name' is {config.name!r} but the directory is {name!r}"
        )
    return config


def served_versions(repo_dir: Path, name: str, config: ModelConfig | None = None) -> list[int]:
    """The versions present that the model's version policy serves (ascending)."""
    config = config or model_config(repo_dir, name)
    return config.version_policy.select(list_versions(repo_dir, name))


def load_model(repo_dir: Path, name: str, version: int | None = None) -> ModelSpec:
    """Loads and validates one model version; when ``version`` is None, the highest one the
    config's version policy serves."""
    model_dir = Path(repo_dir) / name
    versions = list_versions(repo_dir, name)
    if not versions:
        raise ModelRepositoryError(
            f"{model_dir}: no version directory holds a {MODEL_FILE} (expected "
            f"{model_dir}/<version>/{MODEL_FILE})"
        )
    config = model_config(repo_dir, name)
    if version is None:
        served = config.version_policy.select(versions)
        if not served:
            raise ModelRepositoryError(
                f"{model_dir / CONFIG_FILE}: 'version_policy' ("
                f"{config.version_policy.describe()}) serves none of the versions present "
                f"({versions})"
            )
        version = served[-1]
    elif version not in versions:
        raise ModelRepositoryError(
            f"{model_dir / str(version) / MODEL_FILE}: model version {version} is missing "
            f"(present: {versions})"
        )
    path = model_dir / str(version) / MODEL_FILE
    check_onnx_matches(config, path)
    return ModelSpec(config=config, version=version, path=path)
