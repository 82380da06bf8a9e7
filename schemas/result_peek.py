"""The three fields of a ScoreResult a client counts, read without decoding its columns."""

from __future__ import annotations

import json
from typing import NamedTuple

import msgpack

from schemas.encoding import is_json
from schemas.fields import MAX_ID_LEN
from schemas.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    STATUSES,
    ScoreResult,
    check_schema,
)


class ResultPeek(NamedTuple):
    """What a load generator needs from a result: whose it is, how it ended, rows scored."""

    request_id: str
    status: str
    n_scored: int


def peek_result(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                content_type: bytes | str | None = None) -> ResultPeek | None:
    """``request_id``, ``status`` and ``n_scored`` of an encoded ScoreResult, with its
    envelope checked but not its columns; None when the envelope is not right (then
    :func:`schemas.messages.decode` says why)."""
    if len(data) > max_bytes:
        return None
    try:
        d = (json.loads(data) if is_json(content_type)
             else msgpack.unpackb(data, raw=False, strict_map_key=False))
        check_schema(d.get("schema"), ScoreResult.TYPE)
        rid, status, n = d.get("request_id"), d.get("status"), d.get("n_scored", 0)
    except Exception:  # anything wrong: the full decode explains it
        return None
    if (not isinstance(rid, str) or not rid or len(rid) > MAX_ID_LEN
            or status not in STATUSES or type(n) is not int or n < 0):
        return None
    return ResultPeek(rid, status, n)
