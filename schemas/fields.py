"""Each message field declared once, with its wire codec; the wire form derived from that.

A message field is ``wire(codec, ...)``: a dataclass field whose metadata names how it is
written and checked (:class:`Text`, :class:`Int`, :class:`Array`, ...). :func:`wire_form`
walks a message class's fields once, when the class is made, into a :class:`Plan`: the map's
entries in declaration order (which is the wire order) and one reader per field, so
``to_wire`` and ``from_wire`` are two loops, and every check names the field it failed.
A field missing from a map takes its declared default; one without a default is required.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from schemas.candidates import (
    candidates_to_json,
    candidates_to_wire,
    json_column,
    read_candidates,
    wire_column,
)
from schemas.columns import decode_array, encode_array
from schemas.errors import SchemaError

MAX_ID_LEN = 256
INT64_MAX = 2**63 - 1

Scalar = str | int | float | bool
Encoder = Callable[[Any], Any]  # a field's value -> its wire value
Reader = Callable[[dict[str, Any], dict[str, Any]], Any]  # (the map, fields read so far) -> value


# ---- field readers: each names the field it checks -------------------------------------------


def _req(d: dict[str, Any], key: str) -> Any:
    if key not in d:
        raise SchemaError(key, "missing required field")
    return d[key]


def _str(d: dict[str, Any], key: str, required: bool) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise SchemaError(key, "missing required field")
        return None
    if not isinstance(v, str) or not v:
        raise SchemaError(key, f"expected a non-empty string, got {type(v).__name__}")
    if len(v) > MAX_ID_LEN:
        raise SchemaError(key, f"longer than {MAX_ID_LEN} characters")
    return v


def _int(d: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if v is None:
        raise SchemaError(key, "missing required field")
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(key, f"expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise SchemaError(key, f"{v} is outside [{lo}, {hi}]")
    return v


def _scalars(d: dict[str, Any], key: str) -> dict[str, Scalar]:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise SchemaError(key, f"expected a map of scalars, got {type(v).__name__}")
    for k, x in v.items():
        if not isinstance(k, str):
            raise SchemaError(key, f"key {k!r} is not a string")
        if not isinstance(x, (str, int, float, bool)):
            raise SchemaError(f"{key}.{k}", f"expected a scalar, got {type(x).__name__}")
        if isinstance(x, float) and not math.isfinite(x):
            raise SchemaError(f"{key}.{k}", "NaN or infinity is not allowed")
    return v


def _rows(arr: np.ndarray, key: str, n: int | None) -> np.ndarray:
    if n is not None and arr.shape[0] != n:
        raise SchemaError(key, f"has {arr.shape[0]} rows, expected {n}")
    return arr


# ---- codecs: what a field's metadata names ----------------------------------------------------


class Codec:
    """How one field is written into a message's map and read back, checked."""

    @property
    def after(self) -> str | None:
        """A field this one's check needs read first (its bound, its row count)."""
        return None

    def encoder(self) -> Encoder | None:
        """The value's wire form; None: the value as it is."""
        return None

    def json_encoder(self) -> Encoder | None:
        """The value's form in the JSON encoding (the same, unless the value has columns)."""
        return self.encoder()

    def reader(self, key: str, default: Any) -> Reader:
        """Reads and checks ``key``; ``default`` is the field's (``dataclasses.MISSING``)."""
        raise NotImplementedError

    def json_reader(self, key: str, default: Any) -> Reader:
        return self.reader(key, default)


@dataclass(frozen=True)
class Text(Codec):
    """A non-empty string of at most :data:`MAX_ID_LEN` characters (None when not required
    and missing or null)."""

    required: bool = True

    def reader(self, key: str, default: Any) -> Reader:
        required = self.required
        return lambda d, got: _str(d, key, required)


@dataclass(frozen=True)
class OneOf(Codec):
    """A required string from ``choices``; refused as "``'x'`` is not ``says``"."""

    choices: tuple[str, ...]
    says: str

    def reader(self, key: str, default: Any) -> Reader:
        choices, says = self.choices, self.says

        def read(d: dict[str, Any], got: dict[str, Any]) -> str | None:
            v = _str(d, key, True)
            if v not in choices:
                raise SchemaError(key, f"{v!r} is not {says}")
            return v

        return read


@dataclass(frozen=True)
class Int(Codec):
    """An integer in [lo, hi] (not a bool); ``below``: under that (earlier read) field."""

    lo: int = 0
    hi: int = INT64_MAX
    below: str | None = None

    @property
    def after(self) -> str | None:
        return self.below

    def reader(self, key: str, default: Any) -> Reader:
        lo, hi, below = self.lo, self.hi, self.below
        dflt = None if default is dataclasses.MISSING else default
        if below is not None:
            return lambda d, got: _int(d, key, dflt, lo, got[below] - 1)
        return lambda d, got: _int(d, key, dflt, lo, hi)


@dataclass(frozen=True)
class OptInt(Codec):
    """An integer in [0, 2^63 - 1], or None when missing or null."""

    def reader(self, key: str, default: Any) -> Reader:
        return lambda d, got: None if d.get(key) is None else _int(d, key, None, 0, INT64_MAX)


@dataclass(frozen=True)
class Scalars(Codec):
    """A map of string keys to finite scalars (strings, numbers, booleans); {} when missing."""

    def reader(self, key: str, default: Any) -> Reader:
        return lambda d, got: _scalars(d, key)


@dataclass(frozen=True)
class Raw(Codec):
    """Taken as it is, or through ``convert``; unchecked (a dead letter keeps what came)."""

    convert: Callable[[Any], Any] | None = None
    required: bool = False

    def reader(self, key: str, default: Any) -> Reader:
        convert, required = self.convert, self.required
        if required:
            assert convert is not None, "a required raw field converts its value"
            return lambda d, got: convert(_req(d, key))
        if convert is None:
            return lambda d, got: d.get(key)
        return lambda d, got: convert(d.get(key))


@dataclass(frozen=True)
class Array(Codec):
    """An array of exactly ``dtype`` with ``ndim`` dimensions, ``[dtype, shape, bytes]`` in
    a map (or a view on a frame); ``rows``: as many rows as that (earlier) column."""

    dtype: str
    ndim: int = 1
    rows: str | None = None

    @property
    def after(self) -> str | None:
        return self.rows

    def empty(self) -> np.ndarray:
        return np.zeros((0,) * self.ndim, self.dtype)

    def encoder(self) -> Encoder | None:
        return encode_array

    def json_encoder(self) -> Encoder | None:
        return _tolist

    def reader(self, key: str, default: Any) -> Reader:
        dtype, ndim, rows = self.dtype, self.ndim, self.rows

        def read(d: dict[str, Any], got: dict[str, Any]) -> np.ndarray:
            v = _req(d, key)
            arr = v if type(v) is np.ndarray else decode_array(v, key, dtype=dtype, ndim=ndim)
            return _rows(arr, key, None if rows is None else got[rows].shape[0])

        return read

    def json_reader(self, key: str, default: Any) -> Reader:
        dtype, rows = self.dtype, self.rows

        def read(d: dict[str, Any], got: dict[str, Any]) -> np.ndarray:
            arr = json_column(_req(d, key), key, dtype=dtype, floats=dtype == "<f4")
            assert type(arr) is np.ndarray  # a dtype is asked for: strings are refused
            return _rows(arr, key, None if rows is None else got[rows].shape[0])

        return read


def _tolist(a: np.ndarray) -> Any:
    return a.tolist()


@dataclass(frozen=True)
class Candidates(Codec):
    """A request's candidate columns (see :mod:`schemas.candidates`)."""

    def encoder(self) -> Encoder | None:
        return candidates_to_wire

    def json_encoder(self) -> Encoder | None:
        return candidates_to_json

    def reader(self, key: str, default: Any) -> Reader:
        return lambda d, got: read_candidates(_req(d, key), wire_column)

    def json_reader(self, key: str, default: Any) -> Reader:
        return lambda d, got: read_candidates(_req(d, key), json_column)


def wire(codec: Codec, **field_args: Any) -> Any:
    """A dataclass field (``default=...``, ``kw_only=...``) written and read by ``codec``."""
    return dataclasses.field(metadata={"wire": codec}, **field_args)


def column(dtype: str, ndim: int = 1, *, rows: str | None = None) -> Any:
    """An :class:`Array` field (a column of the message), empty by default."""
    codec = Array(dtype, ndim, rows)
    return dataclasses.field(default_factory=codec.empty, metadata={"wire": codec})


# ---- the plan of a message class --------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A message class's wire form, from its fields (made once per class)."""

    to_map: Callable[[Any], dict[str, Any]]  # a message -> its map, entries in wire order
    to_json_map: Callable[[Any], dict[str, Any]]  # the same, columns as JSON arrays
    readers: tuple[tuple[str, Reader], ...]  # every field, in the order they are checked
    json_readers: tuple[tuple[str, Reader], ...]
    columns: dict[str, tuple[str, int]]  # a framed message's columns: name -> (dtype, ndim)

    def read(self, d: dict[str, Any], as_json: bool = False) -> dict[str, Any]:
        """The fields of the map ``d``, checked: the keyword arguments of the class."""
        got: dict[str, Any] = {}
        for name, read in self.json_readers if as_json else self.readers:
            got[name] = read(d, got)
        return got


def _plan(cls: type[Any], framed: bool) -> Plan:
    missing = [f.name for f in dataclasses.fields(cls) if "wire" not in f.metadata]
    if missing:
        raise TypeError(f"{cls.__name__}: declare {', '.join(missing)} with wire(codec, ...)")
    fields = [(f, f.metadata["wire"]) for f in dataclasses.fields(cls)]
    framed_columns = {f.name: (c.dtype, c.ndim) for f, c in fields
                      if framed and isinstance(c, Array)}
    in_map = [(f, c) for f, c in fields if f.name not in framed_columns]
    by_name = {f.name: (f, c) for f, c in fields}
    order: dict[str, tuple[dataclasses.Field[Any], Codec]] = {}

    def place(name: str) -> None:  # in declaration order, each after the field it needs
        f, c = by_name[name]
        if c.after is not None:
            place(c.after)
        order.setdefault(name, (f, c))

    for f, _ in fields:
        place(f.name)
    return Plan(
        to_map=_map_maker([(f.name, c.encoder()) for f, c in in_map]),
        to_json_map=_map_maker([(f.name, c.json_encoder()) for f, c in in_map]),
        readers=tuple((f.name, c.reader(f.name, f.default)) for f, c in order.values()),
        json_readers=tuple((f.name, c.json_reader(f.name, f.default))
                           for f, c in order.values()),
        columns=framed_columns,
    )


def _map_maker(entries: list[tuple[str, Encoder | None]]) -> Callable[[Any], dict[str, Any]]:
    """``lambda m: {"a": m.a, "b": enc_b(m.b), ...}``, compiled once per class (as
    dataclasses makes ``__init__``): a map literal costs a third of a loop over the fields."""
    env = {f"_enc{i}": enc for i, (_, enc) in enumerate(entries) if enc is not None}
    items = ", ".join(f"{name!r}: m.{name}" if enc is None else f"{name!r}: _enc{i}(m.{name})"
                      for i, (name, enc) in enumerate(entries))
    to_map: Callable[[Any], dict[str, Any]] = eval(f"lambda m: {{{items}}}", env)
    return to_map


class WireMessage:
    """A message whose fields are declared with :func:`wire`; see :func:`wire_form`."""

    TYPE: ClassVar[str]
    FRAMED: ClassVar[bool] = False  # columns travel in a frame (schemas.messages), not the map
    WIRE: ClassVar[Plan]
    COLUMNS: ClassVar[dict[str, tuple[str, int]]] = {}  # a framed one's, in wire order

    def to_wire(self) -> dict[str, Any]:
        """The MessagePack map of the message (without its ``schema`` name)."""
        return self.WIRE.to_map(self)

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Self:
        """From a decoded map (a frame's columns already arrays); raises SchemaError."""
        return cls(**cls.WIRE.read(d))


MessageClass = TypeVar("MessageClass", bound=type[WireMessage])


def wire_form(cls: MessageClass) -> MessageClass:
    """Derive the wire form of the dataclass ``cls`` from its fields, once; every field
    names its codec (a field left out would silently never travel)."""
    cls.WIRE = _plan(cls, cls.FRAMED)
    cls.COLUMNS = cls.WIRE.columns
    return cls
