"""Feature transforms: small functions over columns that fill a request's model inputs.

A feature pipeline is a list of transforms (see :mod:`workers.features.spec`). Each one reads
the request (user and context scalars, candidate columns) and writes one column of the
``sparse`` (embedding ids) or ``dense`` (normalized numbers) matrix. Everything is
vectorized: a request with 300 candidates costs a handful of numpy calls per feature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import SchemaError
from schemas.strings import MAX_VALUE_BYTES, StringColumn, category_id, category_ids

Scalar = str | int | float | bool

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MISSING = np.uint64(0x5EED_0000_0000_0001)  # the hash of an absent categorical value
NOT_NUMERIC = "a string column where a numeric feature needs numbers"


_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array: a fast, well-spread integer hash. In
    place on one new array and one scratch: a temporary per step costs 2.4x at 30k values."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        t = z >> _S30
        z ^= t
        z *= _M1
        np.right_shift(z, _S27, out=t)
        z ^= t
        z *= _M2
        np.right_shift(z, _S31, out=t)
        z ^= t
        return z


def hash_scalar(value: Scalar | None) -> np.uint64:
    """Hash one categorical value the way a column holding it hashes: an integer like an
    integer column, a string through its category id (:mod:`schemas.strings`; a string of
    decimal digits is that integer)."""
    return hash_scalars([value])[0]  # type: ignore[no-any-return]


_INT64 = range(-2**63, 2**63)
_FEW_STRINGS = 64  # up to this many strings hash one by one (cached), more as a column


def hash_scalars(values: list[object], sources: Sequence[str] = ("value",)) -> np.ndarray:
    """:func:`hash_scalar` of each value: the integers in one vectorized call, the strings
    (and non-integral numbers, as their ``str``) through their category ids, one by one
    and cached when they are few, else in one :func:`category_ids` call. Value i
    comes from ``sources[i % len(sources)]`` (what an error names)."""
    # the integers (most values) in one numpy call; the loop below sees only the others
    odd = [i for i, v in enumerate(values) if type(v) is not int]
    try:
        ids = np.array([0 if type(v) is not int else v for v in values], np.int64)
    except OverflowError:  # an integer beyond int64: hashed as a string, below
        ids, odd = np.zeros(len(values), np.int64), list(range(len(values)))
    strs: list[str] = []
    where: list[int] = []
    missing: list[int] = []
    for i in odd:
        value = values[i]
        if value is None:
            missing.append(i)
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and value in _INT64:
            ids[i] = value
        else:
            strs.append(value if isinstance(value, str) else str(value))
            where.append(i)
    if len(strs) > _FEW_STRINGS:  # a column's worth: one vectorized call
        try:
            col = StringColumn.of(strs)
        except UnicodeEncodeError:
            bad = next(i for i, v in zip(where, strs, strict=True) if not _encodes(v))
            raise SchemaError(sources[bad % len(sources)], "a string that is not valid "
                                                           "Unicode") from None
        lens = np.diff(col.offsets)
        if lens.max() > MAX_VALUE_BYTES:
            bad = where[int(np.argmax(lens))]
            raise _too_long(sources[bad % len(sources)], int(lens.max()))
        ids[where] = category_ids(col)
    else:
        for i, text in zip(where, strs, strict=True):
            try:
                ids[i] = category_id(text)
            except UnicodeEncodeError:
                raise SchemaError(sources[i % len(sources)], "a string that is not valid "
                                                             "Unicode") from None
            except ValueError as e:
                raise _too_long(sources[i % len(sources)], e.args[0]) from None
    out = mix64(ids.view(np.uint64))
    if missing:
        out[missing] = MISSING
    return out


def _too_long(source: str, n: int) -> SchemaError:
    return SchemaError(source, f"{n} bytes; a categorical string is at most "
                               f"{MAX_VALUE_BYTES} bytes")


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def column_ids(col: np.ndarray | StringColumn, field: str) -> np.ndarray:
    """The int64 ids of a categorical candidate column (integers, whole floats, strings)."""
    if isinstance(col, StringColumn):
        return category_ids(col)
    if col.dtype.kind not in "iuf":
        raise SchemaError(field, "categorical column must be integer or string")
    return col.astype(np.int64, copy=False)


def hash_column(col: np.ndarray | StringColumn, field: str = "candidates") -> np.ndarray:
    """Hash a categorical column: integers, floats of whole numbers, or strings."""
    return mix64(column_ids(col, field).view(np.uint64))


def salt(name: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(),
                                    "little"))


@dataclass
class FeatureBatch:
    """One request's inputs and the model inputs being filled."""

    request_id: str
    user: dict[str, Scalar]
    context: dict[str, Scalar]
    candidates: dict[str, np.ndarray | StringColumn]
    sparse: np.ndarray
    dense: np.ndarray
    hashed: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.sparse.shape[0])

    def scalar(self, source: str) -> Scalar | None:
        scope, _, key = source.partition(".")
        return (self.user if scope == "user" else self.context).get(key)


Transform = Callable[[FeatureBatch], None]


def _source_kind(source: str) -> str:
    scope, dot, key = source.partition(".")
    if not dot or not key or scope not in ("user", "context", "candidate"):
        raise ValueError(f"feature source {source!r} must be user.X, context.X or candidate.X")
    return scope


def categorical(name: str, source: str, column: int, buckets: int) -> Transform:
    """Hash ``source`` into ``[0, buckets)`` and write it to ``sparse[:, column]``."""
    scope = _source_kind(source)
    key = source.partition(".")[2]
    s = salt(name)
    b = np.uint64(buckets)

    def apply(batch: FeatureBatch) -> None:
        if scope == "candidate":
            col = batch.candidates.get(key)
            if col is None:
                h = np.full(batch.n, MISSING, dtype=np.uint64)
            else:
                h = hash_column(col, f"candidates.{key}")
        else:
            h = np.full(batch.n, hash_scalars([batch.scalar(source)], [source])[0],
                        dtype=np.uint64)
        batch.hashed[name] = h
        batch.sparse[:, column] = (mix64(h ^ s) % b).view(np.int64)

    apply.__name__ = f"categorical[{name}]"
    return apply


def cross(name: str, parts: list[str], column: int, buckets: int) -> Transform:
    """Combine already-hashed features (e.g. user_city × advertiser_id) into one id."""
    if len(parts) < 2:
        raise ValueError(f"cross {name!r} needs at least two features, got {parts}")
    s = salt(name)
    b = np.uint64(buckets)

    def apply(batch: FeatureBatch) -> None:
        missing = [p for p in parts if p not in batch.hashed]
        if missing:
            raise ValueError(f"cross {name!r} needs {missing} hashed before it")
        h = np.full(batch.n, s, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for p in parts:
                h = mix64(h * np.uint64(31) + batch.hashed[p])
        batch.hashed[name] = h
        batch.sparse[:, column] = (mix64(h ^ s) % b).view(np.int64)

    apply.__name__ = f"cross[{name}]"
    return apply


def numeric(
    name: str,
    source: str,
    column: int,
    *,
    transform: str = "identity",
    mean: float = 0.0,
    std: float = 1.0,
    clip: tuple[float, float] | None = None,
    default: float = 0.0,
) -> Transform:
    """Read a number (user/context scalar or candidate column), normalize it into ``dense``."""
    scope = _source_kind(source)
    key = source.partition(".")[2]
    if transform not in ("identity", "log1p", "standardize"):
        raise ValueError(f"numeric {name!r}: transform must be identity, log1p or standardize")
    if std <= 0:
        raise ValueError(f"numeric {name!r}: std must be positive")

    def apply(batch: FeatureBatch) -> None:
        if scope == "candidate":
            col = batch.candidates.get(key)
            if isinstance(col, StringColumn):
                raise SchemaError(f"candidates.{key}", NOT_NUMERIC)
            x = (np.full(batch.n, default, dtype=np.float32) if col is None
                 else col.astype(np.float32, copy=False))
        else:
            v = batch.scalar(source)
            if v is None:
                v = default
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise SchemaError(f"{source}", f"expected a number, got {v!r}") from None
            x = np.full(batch.n, float(v), dtype=np.float32)
        if clip is not None:
            x = np.clip(x, clip[0], clip[1])
        if transform == "log1p":
            x = np.log1p(np.maximum(x, 0.0))
        elif transform == "standardize":
            x = (x - np.float32(mean)) / np.float32(std)
        batch.dense[:, column] = x

    apply.__name__ = f"numeric[{name}]"
    return apply
