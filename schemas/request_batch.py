"""Many ScoreRequests decoded in one pass: the columns of a fetch joined and checked at once.

Decoding a request on its own costs ~3.5 µs of Python per candidate column (the
``[dtype, shape, bytes]`` checks, a zero-copy view, a finiteness pass per float column),
and a request has a dozen columns or more. Here each request's map gets a check of its
structure only; the bytes of each column are joined over the batch once, and finiteness
and ``bid >= 0`` are one numpy pass per column for the whole batch. The joined columns go
to the feature plan with the batch; each request keeps zero-copy views on its own message. A request
that is anything but ordinary (JSON, a value that fails a check, an odd layout) is decoded
alone by :func:`schemas.messages.decode`, so every refusal reads exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from schemas.columns import ALLOWED_DTYPES
from schemas.encoding import is_json
from schemas.messages import ScoreRequest, check_schema, decode
from schemas.strings import DTYPE as UTF8
from schemas.strings import decode_strings

_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
# every field's reader but the candidates' (those are checked here, for the whole batch)
_HEADER = tuple((name, read) for name, read in ScoreRequest.WIRE.readers if name != "candidates")

Entry = tuple[str, str, Any]  # (column name, dtype, its bytes; or a StringColumn for utf8)


@dataclass
class RequestBatch:
    """The decoded requests of a batch, one per value (or the exception refusing it), and
    ``columns``: each numeric candidate column that every decoded request has with one
    dtype, joined over them in order (empty when one was decoded alone)."""

    requests: list[ScoreRequest | Exception]
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def join(cls, parts: Sequence[RequestBatch]) -> RequestBatch:
        """One batch from consecutive ones; a column stays joined where every part with a
        decoded request has it with the same dtype."""
        requests = [r for p in parts for r in p.requests]
        decoded = [p for p in parts if any(isinstance(r, ScoreRequest) for r in p.requests)]
        if len(decoded) == 1:
            return cls(requests, decoded[0].columns)
        if not decoded or any(not p.columns for p in decoded):
            return cls(requests)
        base = decoded[0].columns
        names = [k for k, v in base.items()
                 if all(k in p.columns and p.columns[k].dtype == v.dtype for p in decoded)]
        return cls(requests, {k: np.concatenate([p.columns[k] for p in decoded]) for k in names})


def decode_requests(values: Sequence[bytes], content_types: Sequence[bytes | str | None],
                    *, max_bytes: int) -> RequestBatch:
    """Every value as a ScoreRequest (or the exception :func:`decode` raises for it), and
    the candidate columns of those decoded here joined (a copy, for the batch's plan)."""
    out: list[ScoreRequest | Exception | None] = [None] * len(values)
    fast: list[tuple[int, dict[str, Any], int, list[Entry]]] = []
    alone = False  # a request decoded alone: its columns are not in the joined arrays
    for i, (value, ctype) in enumerate(zip(values, content_types, strict=True)):
        parsed = _parse(value, ctype, max_bytes)
        if parsed is None:
            out[i] = _decode_alone(value, ctype, max_bytes)
            alone = alone or isinstance(out[i], ScoreRequest)
        else:
            fast.append((i, *parsed))
    columns: dict[str, np.ndarray] = {}
    while fast:
        columns, bad = _joined(fast)
        if not bad:
            break
        for j in sorted(bad, reverse=True):  # refused alone, with their own reason
            i = fast.pop(j)[0]
            out[i] = _decode_alone(values[i], content_types[i], max_bytes)
            alone = alone or isinstance(out[i], ScoreRequest)
    if not fast:
        columns = {}
    for i, fields, _, entries in fast:
        # each request's columns view its own message's bytes, as a single decode's do: the
        # joined copies live only as long as the batch (its checks and its plan call)
        fields["candidates"] = {name: data if dt == UTF8 else np.frombuffer(data, _DTYPES[dt])
                                for name, dt, data in entries}
        out[i] = ScoreRequest(**fields)
    requests: list[ScoreRequest | Exception] = [r for r in out if r is not None]
    assert len(requests) == len(values)
    return RequestBatch(requests, {} if alone else columns)


def _decode_alone(value: bytes, ctype: bytes | str | None, max_bytes: int
                  ) -> ScoreRequest | Exception:
    try:
        return decode(value, ScoreRequest, max_bytes=max_bytes, content_type=ctype)
    except Exception as e:  # that request's reason
        return e


def _parse(value: bytes, ctype: bytes | str | None, max_bytes: int
           ) -> tuple[dict[str, Any], int, list[Entry]] | None:
    """The checked fields of an ordinary MessagePack request (candidates aside), its
    number of candidates and its columns' raw entries, ad_id first; None: decode it alone."""
    if len(value) > max_bytes:
        return None
    try:
        if is_json(ctype):
            return None
        d = msgpack.unpackb(value, raw=False, strict_map_key=False)
        if type(d) is not dict:
            return None
        check_schema(d.get("schema"), ScoreRequest.TYPE)
        layout = _layout(d.get("candidates"))
        if layout is None:
            return None
        fields: dict[str, Any] = {}
        for name, read in _HEADER:
            fields[name] = read(d, fields)
    except Exception:  # decoded alone, which names what is wrong
        return None
    return fields, *layout


def _layout(cands: Any) -> tuple[int, list[Entry]] | None:
    """A request's candidate count and columns, when each is a plain 1-d numeric column
    (or a valid utf8 one) of one length, with integer ``ad_id`` and float ``bid``. The
    checks of :func:`schemas.columns.decode_array`, inlined: this runs for every column."""
    if type(cands) is not dict:
        return None
    ad_id = cands.get("ad_id")
    if type(ad_id) is not list or len(ad_id) != 3:
        return None
    dt, shape, buf = ad_id
    np_dt = _DTYPES.get(dt) if type(dt) is str else None
    if np_dt is None or np_dt.kind not in "iu" or type(shape) is not list or len(shape) != 1:
        return None
    n = shape[0]
    if type(n) is not int or n <= 0 or type(buf) is not bytes or len(buf) != n * np_dt.itemsize:
        return None
    entries: list[Entry] = [("ad_id", dt, buf)]
    want = [n]
    bid_ok = False
    for name, raw in cands.items():
        if type(raw) is not list or type(name) is not str:
            return None
        if len(raw) != 3:
            if len(raw) != 4 or raw[0] != UTF8 or name == "bid":
                return None
            strings = decode_strings(raw, f"candidates.{name}")  # a SchemaError: alone
            if len(strings) != n:
                return None
            entries.append((name, UTF8, strings))
            continue
        dt, shape, buf = raw
        np_dt = _DTYPES.get(dt) if type(dt) is str else None
        if (np_dt is None or shape != want or type(shape[0]) is not int
                or type(buf) is not bytes or len(buf) != n * np_dt.itemsize):
            return None
        if name == "bid":
            if np_dt.kind != "f":
                return None
            bid_ok = True
        elif name == "ad_id":
            continue
        entries.append((name, dt, buf))
    return (n, entries) if bid_ok else None


def _joined(fast: list[tuple[int, dict[str, Any], int, list[Entry]]]
            ) -> tuple[dict[str, np.ndarray], set[int]]:
    """The numeric columns every request of ``fast`` has with one dtype, joined; and which
    of ``fast`` (positions) hold a NaN, an infinity or a negative bid."""
    first = [(name, dt) for name, dt, _ in fast[0][3] if dt != UTF8]
    common = dict(first)
    if any(len(f[3]) != len(fast[0][3]) or [(n, d) for n, d, _ in f[3] if d != UTF8] != first
           for f in fast[1:]):
        for f in fast[1:]:
            have = {name: dt for name, dt, _ in f[3]}
            common = {k: dt for k, dt in common.items() if have.get(k) == dt}
    data: dict[str, list[bytes]] = {k: [] for k in common}
    for f in fast:
        for name, _, buf in f[3]:
            if name in data:
                data[name].append(buf)
    columns = {k: np.frombuffer(b"".join(bufs), _DTYPES[common[k]]) for k, bufs in data.items()}
    bad_rows: list[np.ndarray] = []
    for name, col in columns.items():
        if col.dtype.kind == "f" and not np.isfinite(col).all():
            bad_rows.append(np.flatnonzero(~np.isfinite(col)))
        if name == "bid" and (col < 0).any():
            bad_rows.append(np.flatnonzero(col < 0))
    # columns of some requests only: checked one by one
    bad: set[int] = set()
    for j, f in enumerate(fast):
        for name, dt, buf in f[3]:
            if name in columns or dt == UTF8:
                continue
            col = np.frombuffer(buf, _DTYPES[dt])
            if (col.dtype.kind == "f" and not np.isfinite(col).all()) or (
                    name == "bid" and (col < 0).any()):
                bad.add(j)
    if bad_rows:
        ends = np.cumsum([f[2] for f in fast])
        bad |= set(np.searchsorted(ends, np.concatenate(bad_rows), side="right").tolist())
    return columns, bad
