"""Score requests read from a file or standard input: JSON lines or MessagePack."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import msgpack

from pipeline.headers import now_ms
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest


def read_requests(source: str, fmt: str, reply_to: str | None) -> Iterator[
        tuple[int, ScoreRequest | SchemaError]]:
    """Yield (line or item number, request or the error that names what was wrong);
    ``reply_to`` replaces each request's own."""
    for i, req in _read_requests(source, fmt):
        if reply_to and isinstance(req, ScoreRequest):
            req.reply_to = reply_to
        yield i, req


def _read_requests(source: str, fmt: str) -> Iterator[tuple[int, ScoreRequest | SchemaError]]:
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    try:
        if fmt == "auto":
            fmt = "msgpack" if source.endswith((".msgpack", ".mpk")) else "jsonl"
        if fmt == "msgpack":
            for i, item in enumerate(msgpack.Unpacker(stream, raw=False), 1):
                try:
                    if not isinstance(item, dict):
                        raise SchemaError("", "expected a map")
                    req = ScoreRequest.from_wire(item)
                except SchemaError as e:
                    yield i, e
                    continue
                yield i, req
            return
        for i, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                data: Any = json.loads(line)
                req = request_from_json(data, now_ms())
            except json.JSONDecodeError as e:
                yield i, SchemaError("", f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            except SchemaError as e:
                yield i, e
                continue
            yield i, req
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
