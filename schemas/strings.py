"""String columns: UTF-8 values offset-encoded, and the one rule that turns them into ids.

On the wire a string column is ``["utf8", [n], data, offsets]``: ``data`` the values' UTF-8
bytes back to back, ``offsets`` n + 1 little-endian int32 (value i is
``data[offsets[i]:offsets[i + 1]]``; Arrow's string layout). Categorical features hash a
string through its **category id**, an int64 that then goes the way of an integer id:

- a value that is ``-?[0-9]{1,18}`` (ASCII) is that integer (``"17"`` is the id 17);
- any other value is FNV-1a 64 of its UTF-8 bytes (offset basis 0xcbf29ce484222325, prime
  0x100000001b3), read as a two's-complement int64.

So sending ``"example.com"`` and sending the integer ``fnv1a64("example.com")`` give the same
features, in any language. :func:`category_ids` computes the ids of a whole column with a
few numpy calls per byte position (longest value first), never a Python loop per value.
"""

from __future__ import annotations

import codecs
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import SchemaError

DTYPE = "utf8"
MAX_VALUE_BYTES = 256  # per value: bounds the hash's byte-position loop
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_OFFSET = np.uint64(FNV_OFFSET)
_PRIME = np.uint64(FNV_PRIME)
_POW10 = np.array([10**i for i in range(19)], np.uint64)
_OFFSETS = np.dtype("<i4")


@dataclass(frozen=True, eq=False)
class StringColumn:
    """``n`` UTF-8 strings: value i is ``data[offsets[i]:offsets[i + 1]]``."""

    data: np.ndarray  # uint8 [bytes]
    offsets: np.ndarray  # integer [n + 1], from 0 to len(data), non-decreasing

    @property
    def shape(self) -> tuple[int]:
        return (len(self.offsets) - 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def of(cls, values: Sequence[str]) -> StringColumn:
        """From Python strings (the client side and JSON; no per-value Python code)."""
        encoded = list(map(str.encode, values))
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), np.uint8), offsets)

    def tolist(self) -> list[str]:
        text = self.data.tobytes()
        bounds = self.offsets.tolist()
        return [text[a:b].decode() for a, b in itertools.pairwise(bounds)]

    def to_wire(self) -> list[Any]:
        offsets = np.ascontiguousarray(self.offsets, _OFFSETS)
        return [DTYPE, [len(self)], self.data.data.cast("B") if self.data.size else b"",
                offsets.data.cast("B")]

    @staticmethod
    def concat(cols: Sequence[StringColumn]) -> StringColumn:
        if len(cols) == 1:
            return cols[0]
        ends = np.cumsum([len(c.data) for c in cols])
        parts = [cols[0].offsets[:-1].astype(np.int64)]
        parts += [c.offsets[:-1] + int(base) for c, base in zip(cols[1:], ends, strict=False)]
        parts.append(ends[-1:])
        return StringColumn(np.concatenate([c.data for c in cols]), np.concatenate(parts))


def decode_strings(value: list[Any] | tuple[Any, ...], field: str) -> StringColumn:
    """``["utf8", [n], data, offsets]`` as a StringColumn viewing the message; every check
    names ``field`` (and the row, for a bad value)."""
    if len(value) != 4:
        raise SchemaError(field, "a utf8 column is [\"utf8\", [n], data, offsets]")
    _, shape, data, offsets = value
    if (not isinstance(shape, (list, tuple)) or len(shape) != 1 or type(shape[0]) is not int
            or shape[0] < 0):
        raise SchemaError(field, f"expected 1 dimension, got shape {shape!r}")
    n = shape[0]
    for name, buf in (("data", data), ("offsets", offsets)):
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise SchemaError(field, f"{name} must be binary, got {type(buf).__name__}")
    if len(offsets) != 4 * (n + 1):
        raise SchemaError(field, f"offsets have {len(offsets)} bytes; {n} rows need "
                                 f"{n + 1} int32 ({4 * (n + 1)} bytes)")
    col = StringColumn(np.frombuffer(data, np.uint8), np.frombuffer(offsets, _OFFSETS))
    check(col, field)
    return col


def check(col: StringColumn, field: str) -> None:
    """Offsets in order, every value valid UTF-8 of at most MAX_VALUE_BYTES bytes (a few
    numpy calls per column: this runs for every string column of every request)."""
    off, data = col.offsets, col.data
    if int(off[0]) != 0:
        raise SchemaError(field, f"offsets[0] is {int(off[0])}, must be 0")
    lens = off[1:] - off[:-1]
    if len(lens) and int(lens.min()) < 0:
        i = int(np.flatnonzero(lens < 0)[0])
        raise SchemaError(f"{field}[{i}]", f"offsets[{i + 1}] = {int(off[i + 1])} is below "
                                           f"offsets[{i}] = {int(off[i])}")
    if int(off[-1]) != len(data):
        raise SchemaError(field, f"offsets end at {int(off[-1])}, but data has {len(data)} "
                                 "bytes")
    if len(lens) and int(lens.max()) > MAX_VALUE_BYTES:
        i = int(np.argmax(lens))
        raise SchemaError(f"{field}[{i}]", f"{int(lens[i])} bytes; a string value is at most "
                                           f"{MAX_VALUE_BYTES} bytes")
    try:
        text, _ = codecs.utf_8_decode(data.data, "strict", True)
    except UnicodeDecodeError as e:
        i = int(np.searchsorted(off, e.start, side="right")) - 1
        raise SchemaError(f"{field}[{i}]", "not valid UTF-8") from None
    if len(text) == len(data):
        return  # all ASCII: every offset is on a character
    starts = off[:-1][lens > 0]
    inside = (data[starts] & 0xC0) == 0x80  # a value that starts mid-character
    if inside.any():
        i = int(np.flatnonzero(lens > 0)[np.argmax(inside)])
        raise SchemaError(f"{field}[{i}]", "not valid UTF-8 (starts inside a character)")


def category_ids(col: StringColumn) -> np.ndarray:
    """The int64 category id of every value (see the module docstring)."""
    starts = col.offsets[:-1].astype(np.int64)
    lens = np.diff(col.offsets).astype(np.int64)
    n = len(lens)
    out = np.full(n, _OFFSET, np.uint64)
    if n == 0 or not lens.any():
        return out.view(np.int64)
    data = col.data
    order = np.argsort(-lens, kind="stable")  # longest first: position j touches a prefix
    s_starts = starts[order]
    s_lens = lens[order]
    active = (n - np.cumsum(np.bincount(s_lens))[:-1]).tolist()  # values longer than j
    h = np.full(n, _OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j, k in enumerate(active):
            part = h[:k]
            part ^= data[s_starts[:k] + j]
            part *= _PRIME
    out[order] = h
    ids = out.view(np.int64)
    _decimal_ids(data, starts, lens, ids)
    return ids


_MASK64 = 2**64 - 1


@functools.lru_cache(maxsize=1 << 16)
def category_id(value: str) -> int:
    """The category id of one string, the same rule as :func:`category_ids`, in Python: a
    request's few scalar strings (its user id, say) would otherwise pay some twenty numpy
    calls each batch; the cache makes a repeated value (a returning user, ``"ios"``) a dict
    lookup. Raises UnicodeEncodeError for a string that is not valid Unicode and ValueError
    for one over :data:`MAX_VALUE_BYTES` (the caller names the field)."""
    data = value.encode()
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(len(data))
    negative = data[:1] == b"-"
    digits = data[1:] if negative else data
    if 1 <= len(digits) <= 18 and digits.isdigit():  # bytes.isdigit: ASCII digits only
        return -int(digits) if negative else int(digits)
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & _MASK64
    return h - 2**64 if h >= 2**63 else h


def _decimal_ids(data: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                 ids: np.ndarray) -> None:
    """Overwrite the ids of values that are ``-?[0-9]{1,18}`` with their integer."""
    first = np.zeros(len(lens), np.uint8)
    short = (lens > 0) & (lens <= 19)
    first[short] = data[starts[short]]
    maybe = np.flatnonzero(short & (((first >= ord("0")) & (first <= ord("9")))
                                    | ((first == ord("-")) & (lens > 1))))
    if not len(maybe):
        return
    neg = first[maybe] == ord("-")
    w_start = starts[maybe] + neg
    w_len = lens[maybe] - neg
    group = np.zeros(len(maybe), np.int64)
    np.cumsum(w_len[:-1], out=group[1:])
    pos = np.arange(int(w_len.sum())) - np.repeat(group, w_len)  # position in its value
    byte = data[np.repeat(w_start, w_len) + pos].astype(np.int64) - ord("0")
    bad = np.add.reduceat(((byte < 0) | (byte > 9)).astype(np.int64), group) > 0
    power = _POW10[np.repeat(w_len, w_len) - 1 - pos]
    value = np.add.reduceat(byte.astype(np.uint64) * power, group).view(np.int64)
    ok = ~bad & (w_len <= 18)
    ids[maybe[ok]] = np.where(neg[ok], -value[ok], value[ok])
