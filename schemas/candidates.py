"""A request's candidate columns: numbers or strings, from MessagePack or from JSON, checked.

The candidates are a map of columns, one row per candidate ad: ``ad_id`` (integers) and
``bid`` (non-negative floats) are required, any other column is a number or a string
(categorical) column of the same length. A column arrives as ``[dtype, shape, bytes]`` or
``["utf8", [n], data, offsets]`` in MessagePack, or as an array in JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from schemas.columns import ALLOWED_DTYPES, decode_array, encode_array
from schemas.errors import SchemaError
from schemas.strings import DTYPE as UTF8
from schemas.strings import StringColumn, decode_strings
from schemas.strings import check as check_strings

Column = np.ndarray | StringColumn  # a candidate column: numbers, or strings (categorical)
ColumnReader = Callable[..., Column]  # (raw value, field path, **decode_array checks) -> column


def wire_column(raw: Any, field: str, **kw: Any) -> Column:
    """A request's candidate column from MessagePack: numbers or a utf8 string column."""
    if isinstance(raw, (list, tuple)) and raw:
        dt = raw[0]
        if dt == UTF8 and kw.get("kinds") is None:
            return decode_strings(raw, field)
        if dt == UTF8:
            raise SchemaError(field, f"dtype {UTF8} is not one of the kinds {kw['kinds']!r}")
        if kw.get("kinds") is None and type(dt) is str and dt not in ALLOWED_DTYPES:
            raise SchemaError(field, f"unsupported dtype {dt!r}; allowed: "
                                     f"{[*sorted(ALLOWED_DTYPES), UTF8]}")
    return decode_array(raw, field, **kw)


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean",
               list: "array", dict: "object", type(None): "null"}


def json_column(values: Any, field: str, *, floats: bool = False, **kw: Any) -> Column:
    """A column from JSON (an array of numbers or strings) in one numpy call: integers ->
    <i8, numbers with a fraction -> <f8 (``floats``: always <f8), booleans -> |b1, strings
    -> a utf8 column. ``kw`` are :func:`decode_array`'s checks, applied after conversion."""
    col: Column
    if type(values) is np.ndarray or type(values) is StringColumn:
        col = values  # already converted (the JSON-lines form infers its own dtypes)
    elif not isinstance(values, list):
        raise SchemaError(field, "expected an array of numbers or strings, got "
                                 f"{_JSON_TYPES.get(type(values), type(values).__name__)}")
    else:
        col = _json_array(values, field, floats)
    want, kinds = kw.get("dtype"), kw.get("kinds")
    if isinstance(col, StringColumn):
        if want is not None or kinds is not None:
            raise SchemaError(field, f"dtype {UTF8} is not one of the kinds {kinds or want!r}")
        return col
    if want is not None and col.dtype.str != want:
        col = col.astype(want)
    if kinds is not None and col.dtype.kind not in kinds:
        raise SchemaError(field, f"dtype {col.dtype.str} is not one of the kinds {kinds!r}")
    return col


def _json_array(values: list[Any], field: str, floats: bool) -> Column:
    types = set(map(type, values))
    if types <= {int}:
        try:
            return np.array(values, np.float64 if floats else np.int64)
        except OverflowError:
            raise SchemaError(field, "an integer outside the int64 range") from None
    if types <= {int, float}:
        return np.array(values, np.float64)
    if types == {bool}:
        return np.array(values, np.bool_)
    if types == {str}:
        try:
            col = StringColumn.of(values)
        except UnicodeEncodeError:
            raise SchemaError(field, "a string that is not valid Unicode (a lone "
                                     "surrogate)") from None
        check_strings(col, field)
        return col
    names = sorted({_JSON_TYPES.get(t, t.__name__) for t in types})
    if len(names) == 1:
        raise SchemaError(field, f"holds {names[0]} values; a column holds numbers, booleans "
                                 "or strings")
    raise SchemaError(field, f"mixes {' and '.join(names)} values; a column holds numbers, "
                             "booleans or strings")


def _finite(arr: Column, key: str) -> None:
    if type(arr) is not np.ndarray or arr.dtype.kind != "f":
        return
    ok = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise SchemaError(f"{key}[{bad}]", "NaN or infinity is not allowed")


def read_candidates(cands: Any, column: ColumnReader) -> dict[str, Column]:
    """The checked columns of ``cands`` (the request's ``candidates`` entry), each read by
    ``column`` (:func:`wire_column` or :func:`json_column`)."""
    if not isinstance(cands, dict) or not cands:
        raise SchemaError("candidates", "expected a non-empty map of columns")
    if "ad_id" not in cands:
        raise SchemaError("candidates.ad_id", "missing required field")
    ad_id = column(cands["ad_id"], "candidates.ad_id", ndim=1, kinds="iu")
    n = ad_id.shape[0]
    if n == 0:
        raise SchemaError("candidates.ad_id", "a request needs at least one candidate")
    columns: dict[str, Column] = {"ad_id": ad_id}
    for name, raw in cands.items():
        if name == "ad_id":
            continue
        if not isinstance(name, str):
            raise SchemaError("candidates", f"column name {name!r} is not a string")
        col = (column(raw, "candidates.bid", ndim=1, floats=True) if name == "bid" and
               column is json_column else column(raw, f"candidates.{name}", ndim=1))
        if col.shape[0] != n:
            raise SchemaError(f"candidates.{name}", f"has {col.shape[0]} rows, ad_id has {n}")
        _finite(col, f"candidates.{name}")
        columns[name] = col
    if "bid" not in columns:
        raise SchemaError("candidates.bid", "missing required column")
    bid = columns["bid"]
    if type(bid) is not np.ndarray or bid.dtype.kind != "f" or (bid < 0).any():
        raise SchemaError("candidates.bid", "must be a non-negative float column")
    return columns


def candidates_to_wire(columns: dict[str, Column]) -> dict[str, Any]:
    """The MessagePack form of a request's columns."""
    return {k: v.to_wire() if isinstance(v, StringColumn) else encode_array(v)
            for k, v in columns.items()}


def candidates_to_json(columns: dict[str, Column]) -> dict[str, Any]:
    """The JSON form of a request's columns: one array each."""
    return {k: v.tolist() for k, v in columns.items()}
