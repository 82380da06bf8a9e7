"""Columnar arrays on the wire: one little-endian buffer per column, decoded zero-copy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from schemas.errors import SchemaError

# Numeric columns: fixed-width little-endian types (string columns: see schemas.strings).
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "<u8", "|u1", "|i1", "|b1"})
_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}


def encode_array(arr: np.ndarray) -> list[Any]:
    """``[dtype, shape, bytes]`` with the dtype forced little-endian and the data contiguous."""
    a = np.asarray(arr)
    le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    a = np.ascontiguousarray(a, dtype=le)
    return [a.dtype.str, list(a.shape), a.data.cast("B") if a.size else b""]


def decode_array(
    value: Any,
    field: str,
    *,
    dtype: str | None = None,
    ndim: int | None = None,
    kinds: str | None = None,
) -> np.ndarray:
    """Decode ``[dtype, shape, bytes]`` without copying; every check names ``field``.

    ``dtype`` requires an exact dtype, ``kinds`` a set of numpy kind letters (``"iu"``).
    Called once per column of every message, so the checks are ordered cheapest first.
    """
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise SchemaError(field, "expected a column [dtype, shape, bytes]")
    dt, shape, buf = value
    np_dt = _DTYPES.get(dt) if type(dt) is str else None
    if np_dt is None:
        raise SchemaError(field, f"unsupported dtype {dt!r}; allowed: {sorted(ALLOWED_DTYPES)}")
    if dtype is not None and dt != dtype:
        raise SchemaError(field, f"dtype {dt} where {dtype} is required")
    if kinds is not None and np_dt.kind not in kinds:
        raise SchemaError(field, f"dtype {dt} is not one of the kinds {kinds!r}")
    if not isinstance(shape, (list, tuple)) or not all(
        type(d) is int and d >= 0 for d in shape
    ):
        raise SchemaError(field, f"shape must be a list of non-negative ints, got {shape!r}")
    if ndim is not None and len(shape) != ndim:
        raise SchemaError(field, f"expected {ndim} dimension(s), got shape {list(shape)}")
    if type(buf) is not bytes and not isinstance(buf, (bytes, bytearray, memoryview)):
        raise SchemaError(field, "column data must be binary")
    count = shape[0] if len(shape) == 1 else math.prod(shape)
    if len(buf) != count * np_dt.itemsize:
        raise SchemaError(
            field, f"{len(buf)} bytes for shape {list(shape)} of {dt} "
                   f"(needs {count * np_dt.itemsize})"
        )
    arr = np.frombuffer(buf, dtype=np_dt)
    return arr if len(shape) == 1 else arr.reshape(shape)
