"""The five message types and their versioned MessagePack wire format.

Every message is a msgpack map with a ``schema`` entry ``ads.<Type>/<major>.<minor>``.
A reader accepts its own major version (any minor: new optional fields) and rejects
others. Per-candidate data is columnar (see :mod:`schemas.columns`). Each field is declared
once, with its codec (:mod:`schemas.fields`); ``to_wire`` and ``from_wire`` follow from it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from schemas.candidates import Column
from schemas.encoding import is_json
from schemas.errors import SchemaError
from schemas.fields import (
    Candidates,
    Int,
    OneOf,
    OptInt,
    Raw,
    Scalar,
    Scalars,
    Text,
    WireMessage,
    column,
    wire,
    wire_form,
)
from schemas.frames import FRAME_MAGIC, decode_frame, encode_frame

MAJOR = 1
MINOR = 1  # 1.1: FeatureChunk.priority
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
STATUSES = ("ok", "partial", "expired", "rejected")
TOP_K_MAX = 10_000
PRIORITY_MAX = 9
N_CHUNKS_MAX = 1_000_000


def schema_name(type_name: str) -> str:
    return f"ads.{type_name}/{MAJOR}.{MINOR}"


def _text_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _headers(v: Any) -> dict[str, bytes]:
    return dict(v or {})


@wire_form
@dataclass(eq=False)
class ScoreRequest(WireMessage):
    """One ad request: a user, a context and the candidate ads to rank (columns)."""

    TYPE: ClassVar[str] = "ScoreRequest"
    request_id: str = wire(Text())
    user_id: str = wire(Text())
    # keyword-only: declared in wire order, and candidates still the third positional argument
    user: dict[str, Scalar] = wire(Scalars(), default_factory=dict, kw_only=True)
    context: dict[str, Scalar] = wire(Scalars(), default_factory=dict, kw_only=True)
    candidates: dict[str, Column] = wire(Candidates())
    top_k: int = wire(Int(lo=1, hi=TOP_K_MAX), default=10)
    reply_to: str | None = wire(Text(required=False), default=None)
    deadline_ms: int | None = wire(OptInt(), default=None)
    priority: int = wire(Int(hi=PRIORITY_MAX), default=0)

    @property
    def n_candidates(self) -> int:
        return int(self.candidates["ad_id"].shape[0])

    @classmethod
    def from_wire(cls, d: dict[str, Any], *, json_columns: bool = False) -> ScoreRequest:
        """From a decoded map; ``json_columns``: its columns are JSON arrays. Once its id is
        read, a refusal names the request and its reply topic, so it can be answered."""
        try:
            return cls(**cls.WIRE.read(d, json_columns))
        except SchemaError as e:
            if e.field != "request_id":
                e.request_id, e.reply_to = d["request_id"], _text_or_none(d.get("reply_to"))
            raise


@dataclass(eq=False)
class _ChunkHeader(WireMessage):
    """Fields every chunk of a request carries, so any stage can finish the request."""

    FRAMED: ClassVar[bool] = True
    request_id: str = wire(Text())
    chunk: int = wire(Int(below="n_chunks"))
    n_chunks: int = wire(Int(lo=1, hi=N_CHUNKS_MAX))
    n_candidates: int = wire(Int(lo=1))
    top_k: int = wire(Int(lo=1, hi=TOP_K_MAX))
    reply_to: str | None = wire(Text(required=False))
    deadline_ms: int | None = wire(OptInt())


@wire_form
@dataclass(eq=False)
class FeatureChunk(_ChunkHeader):
    """A slice of one request's candidates as model inputs; dense finiteness is checked per
    batch by the scorer (:func:`first_nonfinite_row`), not per chunk."""

    TYPE: ClassVar[str] = "FeatureChunk"
    priority: int = wire(Int(hi=PRIORITY_MAX), default=0)
    user_id: str | None = wire(Text(required=False), default=None)  # sticky A/B splits
    ad_id: np.ndarray = column("<i8")
    bid: np.ndarray = column("<f4", rows="ad_id")
    dense: np.ndarray = column("<f4", 2, rows="ad_id")
    sparse: np.ndarray = column("<i8", 2, rows="ad_id")


@wire_form
@dataclass(eq=False)
class ScoreChunk(_ChunkHeader):
    """Scores for one FeatureChunk (``status='expired'`` carries no rows)."""

    TYPE: ClassVar[str] = "ScoreChunk"
    status: str = wire(OneOf(("ok", "expired"), "'ok' or 'expired'"), default="ok")
    ad_id: np.ndarray = column("<i8")
    bid: np.ndarray = column("<f4", rows="ad_id")
    score: np.ndarray = column("<f4", rows="ad_id")
    # the model and version that scored it (None when expired)
    model: str | None = wire(Text(required=False), default=None)
    model_version: int | None = wire(OptInt(), default=None)


@wire_form
@dataclass(eq=False)
class ScoreResult(WireMessage):
    """The answer to a request: ranked top-K ads, or a status saying why not."""

    TYPE: ClassVar[str] = "ScoreResult"
    request_id: str = wire(Text())
    status: str = wire(OneOf(STATUSES, f"one of {STATUSES}"))
    ad_id: np.ndarray = column("<i8")
    bid: np.ndarray = column("<f4", rows="ad_id")
    score: np.ndarray = column("<f4", rows="ad_id")
    n_candidates: int = wire(Int(), default=0)
    n_scored: int = wire(Int(), default=0)
    reason: str | None = wire(Raw(_text_or_none), default=None)
    # the model and version that scored it (None if none scored)
    model: str | None = wire(Text(required=False), default=None)
    model_version: int | None = wire(OptInt(), default=None)

    def to_json_wire(self) -> dict[str, Any]:
        """The map of :meth:`to_wire` with JSON arrays for columns (a JSON answer's body)."""
        return self.WIRE.to_json_map(self)

    @classmethod
    def from_json_wire(cls, d: dict[str, Any]) -> ScoreResult:
        return cls(**cls.WIRE.read(d, as_json=True))

    def to_json(self) -> dict[str, Any]:
        """The JSON form printed by ``adstream produce --wait``."""
        ev = self.score.astype(np.float64) * self.bid.astype(np.float64)
        out: dict[str, Any] = {"request_id": self.request_id, "status": self.status,
                               "n_candidates": self.n_candidates, "n_scored": self.n_scored}
        out["ads"] = [
            {"ad_id": int(a), "score": float(s), "bid": float(b), "expected_value": float(e)}
            for a, s, b, e in zip(self.ad_id.tolist(), self.score.tolist(),
                                  self.bid.tolist(), ev.tolist(), strict=True)
        ]
        if self.reason:
            out["reason"] = self.reason
        if self.model is not None:
            out["model"], out["model_version"] = self.model, self.model_version
        return out


@wire_form
@dataclass(eq=False)
class DeadLetter(WireMessage):
    """A message that could not be processed, with where it came from and why."""

    TYPE: ClassVar[str] = "DeadLetter"
    source_topic: str = wire(Text())
    source_partition: int = wire(Int())
    source_offset: int = wire(Int())
    stage: str = wire(Text())
    error: str = wire(Raw(str, required=True))
    value: bytes = wire(Raw(bytes, required=True))
    key: bytes | None = wire(Raw(), default=None)
    headers: dict[str, bytes] = wire(Raw(_headers), default_factory=dict)
    request_id: str | None = wire(Raw(), default=None)
    ts_ms: int = wire(Int(), default=0)


Message = ScoreRequest | FeatureChunk | ScoreChunk | ScoreResult | DeadLetter
M = TypeVar("M", ScoreRequest, FeatureChunk, ScoreChunk, ScoreResult, DeadLetter)
_T = TypeVar("_T")


def encode(msg: Message) -> bytes:
    """Serialize a message with its schema name (chunks as frames, see :data:`FRAME_MAGIC`)."""
    d = msg.to_wire()
    d["schema"] = schema_name(msg.TYPE)
    if msg.FRAMED:
        return encode_frame(d, msg)
    return msgpack.packb(d, use_bin_type=True)  # type: ignore[no-any-return]


def encode_json(msg: ScoreRequest | ScoreResult) -> bytes:
    """A request or result as JSON (UTF-8; columns as arrays): the ``application/json``
    encoding of :mod:`schemas.encoding`."""
    d = msg.WIRE.to_json_map(msg)
    d["schema"] = schema_name(msg.TYPE)
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def first_nonfinite_row(dense: np.ndarray) -> int | None:
    """The first row of ``dense`` with a NaN or infinity (one pass over a whole batch)."""
    if np.isfinite(dense).all():
        return None
    return int(np.flatnonzero(~np.isfinite(dense).reshape(dense.shape[0], -1).all(axis=1))[0])


def check_schema(value: Any, type_name: str) -> None:
    """Accept ``ads.<type_name>/<MAJOR>.x``; reject anything else with the reason."""
    if not isinstance(value, str):
        raise SchemaError("schema", f"missing schema name (expected 'ads.{type_name}/{MAJOR}.x')")
    name, _, version = value.partition("/")
    if name != f"ads.{type_name}":
        raise SchemaError("schema", f"{value!r} where ads.{type_name} is expected")
    major = version.split(".", 1)[0]
    if major != str(MAJOR):
        raise SchemaError("schema", f"version {version!r} is not supported; this reader "
                                    f"accepts major version {MAJOR}")


@dataclass(frozen=True)
class RequestAddress:
    """What answering a request needs: its id, where to reply, how many candidates."""

    request_id: str
    reply_to: str | None
    n_candidates: int


def peek_request(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 content_type: bytes | str | None = None) -> RequestAddress | None:
    """The address of a ScoreRequest without validating its columns (about 8 µs instead of
    70 µs for 100 candidates), for answering one that is already past its deadline; None
    when the envelope itself is not right (then the full decode says why)."""
    if len(data) > max_bytes:
        return None
    try:
        as_json = is_json(content_type)
        d = json.loads(data) if as_json else msgpack.unpackb(data, raw=False,
                                                             strict_map_key=False)
        check_schema(d.get("schema"), ScoreRequest.TYPE)
    except Exception:  # anything wrong: the full decode explains it
        return None
    rid, reply_to = d.get("request_id"), d.get("reply_to")
    if not isinstance(rid, str) or not rid or not (reply_to is None or isinstance(reply_to, str)):
        return None
    n = 0
    with contextlib.suppress(Exception):
        ad_id = d["candidates"]["ad_id"]
        n = len(ad_id) if as_json else int(ad_id[1][0])
    return RequestAddress(rid, reply_to, n)


def decode(data: bytes, cls: type[M], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           content_type: bytes | str | None = None) -> M:
    """Parse and validate ``data`` as ``cls``; raise SchemaError naming the field.
    ``content_type`` is the message's ``content-type`` header (JSON or MessagePack)."""
    if len(data) > max_bytes:
        raise SchemaError("", f"message of {len(data)} bytes is over the {max_bytes}-byte limit")
    if is_json(content_type):
        return _decode_json(data, cls)
    if cls.FRAMED:
        d = decode_frame(data, cls)
        try:
            check_schema(d.get("schema"), cls.TYPE)
            return cls.from_wire(d)
        except SchemaError as e:
            rid = d.get("request_id")
            e.request_id = e.request_id or (rid if isinstance(rid, str) else None)
            raise
    if data[:4] == FRAME_MAGIC:
        raise SchemaError("", f"an adstream chunk frame, not MessagePack: where "
                          f"ads.{cls.TYPE} is expected")
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises many unrelated types
        hint = ("; it looks like JSON: JSON lines go through `adstream produce`"
                if data[:1] in (b"{", b"[") else "")
        raise SchemaError("", f"not valid MessagePack ({type(e).__name__}: {e}){hint}") from None
    return _from_map(d, cls.TYPE, cls.from_wire)


def _from_map(d: object, type_name: str, build: Callable[[dict[str, Any]], _T]) -> _T:
    """``build(d)`` after the checks every top-level map gets; a SchemaError names the
    request id and reply topic the map carries, so the refusal can be answered."""
    if not isinstance(d, dict):
        raise SchemaError("", f"expected a map at the top level, got {type(d).__name__}")
    rid = d.get("request_id") if isinstance(d.get("request_id"), str) else None
    reply_to = d.get("reply_to") if isinstance(d.get("reply_to"), str) else None
    try:
        check_schema(d.get("schema"), type_name)
        return build(d)
    except SchemaError as e:
        e.request_id = e.request_id or rid
        e.reply_to = e.reply_to or reply_to
        raise


def _decode_json(data: bytes, cls: type[M]) -> M:
    """A ScoreRequest or ScoreResult sent as JSON: the same fields and checks as MessagePack,
    columns as JSON arrays."""
    if cls is not ScoreRequest and cls is not ScoreResult:
        raise SchemaError("content-type", f"ads.{cls.TYPE} is not sent as JSON")
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError("", f"not valid JSON ({e})") from None
    if cls is ScoreRequest:
        return _from_map(  # type: ignore[return-value]
            d, cls.TYPE, lambda m: ScoreRequest.from_wire(m, json_columns=True))
    return _from_map(d, cls.TYPE, ScoreResult.from_json_wire)  # type: ignore[return-value]
