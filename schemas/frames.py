"""The frame of FeatureChunk and ScoreChunk: a MessagePack header, then the columns' bytes.

A framed message (``FRAMED``) sends its declared columns (``COLUMNS``, from its fields)
outside the MessagePack map, so that the reader can view them without a copy.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from schemas.errors import SchemaError
from schemas.fields import WireMessage

FRAME_MAGIC = b"\xc1ADS"
"""FeatureChunk and ScoreChunk travel only between adstream's own stages, as frames:
``FRAME_MAGIC``, a 4-byte little-endian length, a MessagePack map (the fields and
``columns``: ``[dtype, shape]`` per column of ``COLUMNS``), then the columns' bytes back to
back. The reader takes every column as a view on the message (zero copy: msgpack's bin
would be copied out), and 0xc1 never starts a MessagePack value, so a frame is never
mistaken for one."""


def encode_frame(d: dict[str, Any], msg: WireMessage) -> bytes:
    """``msg`` as a frame: ``d`` (its map, with its schema name) and then its columns."""
    layout = []
    buffers = []
    for name, (dtype, _) in msg.COLUMNS.items():
        a = getattr(msg, name)
        if a.dtype.str != dtype or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=dtype)
        layout.append([dtype, list(a.shape)])
        buffers.append(a.data if a.size else b"")
    d["columns"] = layout
    head = msgpack.packb(d, use_bin_type=True)
    return b"".join((FRAME_MAGIC, len(head).to_bytes(4, "little"), head, *buffers))


def decode_frame(data: bytes, cls: type[WireMessage]) -> dict[str, Any]:
    """The fields of a frame, its columns as arrays viewing ``data``."""
    if data[:4] != FRAME_MAGIC or len(data) < 8:
        raise SchemaError("", f"not an adstream {cls.TYPE} frame (it starts with "
                          f"{bytes(data[:4])!r}, not {FRAME_MAGIC!r})")
    head_len = int.from_bytes(data[4:8], "little")
    if 8 + head_len > len(data):
        raise SchemaError("", f"frame header of {head_len} bytes runs past the message")
    try:
        d = msgpack.unpackb(memoryview(data)[8:8 + head_len], raw=False)
    except Exception as e:  # msgpack raises many unrelated types
        raise SchemaError("", f"frame header is not valid MessagePack ({e})") from None
    if type(d) is not dict:
        raise SchemaError("", f"expected a map in the frame header, got {type(d).__name__}")
    columns = cls.COLUMNS
    layout = d.get("columns")
    if type(layout) is not list or len(layout) != len(columns):
        raise SchemaError("columns", f"expected {len(columns)} [dtype, shape] entries for "
                          f"{', '.join(columns)}")
    pos = 8 + head_len
    for (name, (dtype, ndim)), entry in zip(columns.items(), layout, strict=True):
        if type(entry) is not list or len(entry) != 2 or entry[0] != dtype:
            raise SchemaError(name, f"expected [{dtype!r}, shape], got {entry!r}")
        shape = entry[1]
        if type(shape) is not list or len(shape) != ndim or not all(
                type(x) is int and x >= 0 for x in shape):
            raise SchemaError(name, f"expected a shape of {ndim} non-negative ints, got "
                              f"{shape!r}")
        count = shape[0] if ndim == 1 else shape[0] * shape[1]
        dt = _FRAME_DTYPES[dtype]
        end = pos + count * dt.itemsize
        if end > len(data):
            raise SchemaError(name, f"shape {shape} runs past the end of the message")
        arr = np.frombuffer(data, dt, count, pos)
        d[name] = arr if ndim == 1 else arr.reshape(shape)
        pos = end
    if pos != len(data):
        raise SchemaError("columns", f"{len(data) - pos} bytes after the last column")
    return d


_FRAME_DTYPES: dict[str, np.dtype[Any]] = {"<i8": np.dtype("<i8"), "<f4": np.dtype("<f4")}
