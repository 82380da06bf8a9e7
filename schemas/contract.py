"""The wire contract as JSON Schema (draft 2020-12), generated from the message definitions.

Each schema describes a message *after MessagePack decoding*: maps are objects, msgpack
``str`` is a string, msgpack ``bin`` is marked ``"x-msgpack": "bin"`` (JSON has no bytes
type; validators that do not know the keyword ignore it). ``*.json.schema.json`` describe
the JSON encoding of a request and a result (``content-type: application/json``), where a
column is a JSON array. Kafka headers are described as
their values read as ASCII text. ``python -m schemas.contract DIR`` writes one file per
document; ``scripts/update-contract`` does that for ``docs/contract/``, and a test fails when
the checked-in files differ from what this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.headers import ACCEPT, CONTENT_TYPE, DEADLINE_MS, ORIGIN, SCHEMA, SENT_MS, STAGE_PREFIX, TRACEPARENT, TRACESTATE, TRACE_ID
from schemas import strings
from schemas.columns import ALLOWED_DTYPES
from schemas.encoding import JSON, MSGPACK
from schemas.fields import INT64_MAX, MAX_ID_LEN
from schemas.frames import FRAME_MAGIC
from schemas.messages import (
    MAJOR,
    MINOR,
    N_CHUNKS_MAX,
    PRIORITY_MAX,
    STATUSES,
    TOP_K_MAX,
    DeadLetter,
    FeatureChunk,
    ScoreChunk,
    ScoreRequest,
    ScoreResult,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:adstream:contract:"
Schema = dict[str, Any]

BIN: Schema = {"x-msgpack": "bin",
               "description": "MessagePack bin (raw bytes); a msgpack str is refused"}


def _dtypes(kinds: str | None = None) -> list[str]:
    return sorted(d for d in ALLOWED_DTYPES if kinds is None or np.dtype(d).kind in kinds)


def column(dtypes: list[str], ndim: int, description: str, *, min_rows: int = 0) -> Schema:
    """``[dtype, shape, bytes]``: a little-endian array; len(bytes) = prod(shape) × itemsize."""
    dims: list[Schema] = [{"type": "integer", "minimum": min_rows}]
    dims += [{"type": "integer", "minimum": 0}] * (ndim - 1)
    return {
        "description": description,
        "type": "array",
        "prefixItems": [
            {"enum": dtypes, "description": "numpy dtype string, little-endian"},
            {"type": "array", "prefixItems": dims, "minItems": ndim, "maxItems": ndim,
             "description": f"shape: {ndim} dimension(s), rows first"},
            {**BIN, "description": "the array's bytes, C order: exactly prod(shape) × "
                                   "itemsize bytes; a msgpack str is refused"},
        ],
        "minItems": 3,
        "maxItems": 3,
    }


def utf8_column(description: str) -> Schema:
    """``["utf8", [n], data, offsets]``: n UTF-8 strings, offset-encoded."""
    return {
        "description": description,
        "type": "array",
        "prefixItems": [
            {"const": strings.DTYPE, "description": "a string column"},
            {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0}],
             "minItems": 1, "maxItems": 1, "description": "shape: [n]"},
            {**BIN, "description": "the values' UTF-8 bytes back to back; each value at most "
                                   f"{strings.MAX_VALUE_BYTES} bytes"},
            {**BIN, "description": "n + 1 little-endian int32 offsets: 0, non-decreasing, the "
                                   "last = len(data); value i is data[offsets[i]:offsets[i+1]]"},
        ],
        "minItems": 4,
        "maxItems": 4,
    }


CATEGORY_IDS = (
    "a categorical feature reads a string through its category id: a value matching "
    "-?[0-9]{1,18} is that integer, any other is FNV-1a 64 of its UTF-8 bytes (offset basis "
    f"{strings.FNV_OFFSET:#x}, prime {strings.FNV_PRIME:#x}) as a two's-complement int64, "
    "which is then hashed like an integer id (the same for user and context strings)")


def json_array(items: Schema, description: str, *, min_items: int = 0) -> Schema:
    return {"description": description, "type": "array", "items": items,
            "minItems": min_items}


JSON_COLUMN: Schema = {
    "description": "a column as a JSON array: all integers (int64), numbers (float64; "
                   "finite), all booleans, or all strings (a string column; " + CATEGORY_IDS
                   + ")",
    "anyOf": [json_array({"type": "number"}, "numbers"),
              json_array({"type": "boolean"}, "booleans"),
              json_array({"type": "string", "maxLength": strings.MAX_VALUE_BYTES},
                         "strings")]}


def _schema_entry(type_name: str) -> Schema:
    return {"type": "string", "pattern": rf"^ads\.{type_name}/{MAJOR}(\..*)?$",
            "description": f"mandatory: ads.{type_name}/{MAJOR}.<minor> (now "
                           f"ads.{type_name}/{MAJOR}.{MINOR}); readers accept major {MAJOR} "
                           "with any minor and refuse others"}


def _id(description: str) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN,
            "description": f"{description}; a non-empty string of at most {MAX_ID_LEN} "
                           "characters (an integer is refused)"}


def _opt(s: Schema) -> Schema:
    return {"anyOf": [s, {"type": "null"}], "description": s.get("description", "")}


def _int(lo: int, hi: int, description: str) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi, "description": description}


def _message(type_name: str, description: str, properties: Schema, required: list[str]
             ) -> Schema:
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}{type_name}:{MAJOR}",
        "title": f"ads.{type_name}/{MAJOR}.{MINOR}",
        "description": description + " Unknown fields are ignored (a later minor version may "
                                     "add optional ones).",
        "type": "object",
        "properties": {"schema": _schema_entry(type_name), **properties},
        "required": ["schema", *required],
    }


SCALARS: Schema = {
    "type": "object",
    "additionalProperties": {"type": ["string", "integer", "number", "boolean"],
                             "description": "a scalar; floats must be finite"},
}
REPLY_TO = _opt(_id("topic the result goes to (must exist); null or absent: the results topic"))
DEADLINE = _opt(_int(0, INT64_MAX, "epoch milliseconds after which the request is answered "
                                   "expired; the Kafka header deadline_ms wins over it"))


def _candidates(as_json: bool) -> tuple[Schema, Schema]:
    if as_json:
        return {
            "ad_id": json_array({"type": "integer"}, "ad ids (integers)", min_items=1),
            "bid": json_array({"type": "number", "minimum": 0}, "bids, finite and >= 0 "
                                                                "(read as float64)"),
        }, JSON_COLUMN
    other = {"anyOf": [column(_dtypes(), 1, "numbers; floats must be finite"),
                       utf8_column("strings, for categorical features: " + CATEGORY_IDS)],
             "description": "any other candidate attribute: a numeric or a utf8 column"}
    return {
        "ad_id": column(_dtypes("iu"), 1, "ad ids (an integer dtype)", min_rows=1),
        "bid": column(_dtypes("f"), 1, "bids, finite and >= 0 (a float dtype)"),
    }, other


def score_request(as_json: bool = False) -> Schema:
    known, other = _candidates(as_json)
    doc = _message(
        ScoreRequest.TYPE,
        "One ad request: a user, a context and the candidate ads to rank. Topic ads.requests, "
        "key = user_id (UTF-8)." + (
            f" This is the JSON encoding, sent with the header content-type: {JSON}."
            if as_json else f" MessagePack (content-type absent or {MSGPACK})."),
        {
            "request_id": _id("unique per request (a reused id within the dedupe window is "
                              "answered rejected)"),
            "user_id": _id("the user; also the Kafka key"),
            "user": {**SCALARS, "description": "user features by name"},
            "context": {**SCALARS, "description": "context features by name"},
            "candidates": {
                "description": "one 1-D column per candidate attribute, all with the same "
                               "number of rows (at least 1)",
                "type": "object",
                "properties": known,
                "additionalProperties": other,
                "required": ["ad_id", "bid"],
            },
            "top_k": _int(1, TOP_K_MAX, "how many ads to return (default 10; null is refused)"),
            "reply_to": REPLY_TO,
            "deadline_ms": DEADLINE,
            "priority": _int(0, PRIORITY_MAX, "0 (default) to 9; higher is scored first"),
        },
        ["request_id", "user_id", "candidates"],
    )
    if as_json:
        doc["$id"] = doc["$id"] + ":json"
    return doc


def _chunk_fields() -> Schema:
    return {
        "request_id": _id("the request's id"),
        "chunk": _int(0, N_CHUNKS_MAX - 1, "index of this chunk, < n_chunks"),
        "n_chunks": _int(1, N_CHUNKS_MAX, "how many chunks the request was split into"),
        "n_candidates": _int(1, INT64_MAX, "candidates of the whole request"),
        "top_k": _int(1, TOP_K_MAX, "the request's top_k"),
        "reply_to": REPLY_TO,
        "deadline_ms": DEADLINE,
    }


CHUNK_REQUIRED = ["request_id", "chunk", "n_chunks", "n_candidates", "top_k", "columns"]
FRAME = (f"Sent as a frame, not one MessagePack document: the 4 bytes {FRAME_MAGIC!r}, a "
         "4-byte little-endian length L, L bytes of MessagePack (the map this schema "
         "describes), then the columns' raw little-endian bytes back to back, in the order "
         "of 'columns'. Internal: only adstream's own stages write and read it.")


def _layout(columns: dict[str, tuple[str, int]], what: dict[str, str]) -> Schema:
    """``columns``: one ``[dtype, shape]`` per column, in frame order."""
    items = []
    for name, (dtype, ndim) in columns.items():
        items.append({
            "description": f"{name}: {what[name]}",
            "type": "array",
            "prefixItems": [{"const": dtype},
                            {"type": "array", "minItems": ndim, "maxItems": ndim,
                             "items": {"type": "integer", "minimum": 0}}],
            "minItems": 2, "maxItems": 2})
    return {"description": "the layout of the column bytes after the header",
            "type": "array", "prefixItems": items,
            "minItems": len(items), "maxItems": len(items)}


def feature_chunk() -> Schema:
    return _message(
        FeatureChunk.TYPE,
        "A slice of one request's candidates as model inputs. Topic ads.features, key = "
        "'<request_id>:<chunk>' (or user_id with features.key = 'user'). " + FRAME,
        {**_chunk_fields(),
         "priority": _int(0, PRIORITY_MAX, "the request's priority"),
         "user_id": {"type": ["string", "null"],
                     "description": "the request's user_id (sticky A/B splits)"},
         "columns": _layout(FeatureChunk.COLUMNS, {
             "ad_id": "ad ids of this chunk [rows]", "bid": "their bids [rows]",
             "dense": "dense model inputs [rows, n_dense], finite",
             "sparse": "embedding ids [rows, n_sparse]"})},
        CHUNK_REQUIRED,
    )


def score_chunk() -> Schema:
    return _message(
        ScoreChunk.TYPE,
        "Scores for one FeatureChunk. Topic ads.scores, key = request_id (or user_id). "
        + FRAME,
        {**_chunk_fields(),
         "status": {"enum": ["ok", "expired"], "description": "expired carries no rows"},
         "model": {"type": ["string", "null"],
                   "description": "the model that scored the rows (null when expired)"},
         "model_version": {"type": ["integer", "null"], "minimum": 1,
                           "description": "its version"},
         "columns": _layout(ScoreChunk.COLUMNS, {
             "ad_id": "ad ids [rows]", "bid": "their bids [rows]",
             "score": "CTR per row, same rows as ad_id"})},
        [*CHUNK_REQUIRED, "status"],
    )


def score_result(as_json: bool = False) -> Schema:
    if as_json:
        ad_id = json_array({"type": "integer"}, "ranked ad ids (int64)")
        bid = json_array({"type": "number"}, "their bids (float32 values)")
        score = json_array({"type": "number"}, "their CTRs (float32 values)")
    else:
        ad_id = column(["<i8"], 1, "ranked ad ids, int64")
        bid = column(["<f4"], 1, "their bids, float32")
        score = column(["<f4"], 1, "their CTRs, float32")
    doc = _message(
        ScoreResult.TYPE,
        "The answer to a request. Topic ads.results or the request's reply_to, key = "
        "request_id. ad_id/bid/score are the top K, best first (expected value score × bid, "
        "ties by ad_id); empty unless status is ok or partial." + (
            f" This is the JSON encoding: the answer to a request sent with the header "
            f"accept: {JSON}, itself carrying content-type: {JSON}." if as_json else ""),
        {
            "request_id": _id("the request's id"),
            "status": {"enum": list(STATUSES),
                       "description": "ok; partial (deadline passed with some scored); "
                                      "expired (none scored in time); rejected (see reason)"},
            "ad_id": ad_id,
            "bid": bid,
            "score": score,
            "n_candidates": _int(0, INT64_MAX, "candidates in the request"),
            "n_scored": _int(0, INT64_MAX, "candidates that were scored"),
            "reason": {"type": ["string", "null"],
                       "description": "why not ok: names the field for rejected"},
            "model": {"type": ["string", "null"],
                      "description": "the model that scored the candidates (null if none)"},
            "model_version": {"type": ["integer", "null"], "minimum": 1,
                              "description": "the version that scored them; the highest when "
                                             "a request's chunks met different versions "
                                             "(during a swap, three-hop topology)"},
        },
        ["request_id", "status", "ad_id", "bid", "score"],
    )
    if as_json:
        doc["$id"] = doc["$id"] + ":json"
    return doc


def dead_letter() -> Schema:
    return _message(
        DeadLetter.TYPE,
        "A message that could not be processed. Topic ads.dlq, key = the source key.",
        {
            "source_topic": {"type": "string", "minLength": 1},
            "source_partition": _int(0, INT64_MAX, "partition it was read from"),
            "source_offset": _int(0, INT64_MAX, "offset it was read at"),
            "stage": {"type": "string", "minLength": 1,
                      "description": "the role that refused it: features, scorer, aggregator, "
                                     "fused"},
            "error": {"type": "string", "description": "the reason, naming the field"},
            "value": {**BIN, "description": "the original message bytes"},
            "key": _opt({**BIN, "description": "the original key"}),
            "headers": {"type": "object", "additionalProperties": BIN,
                        "description": "the original headers"},
            "request_id": {"type": ["string", "null"],
                           "description": "when it could be read"},
            "ts_ms": _int(0, INT64_MAX, "epoch ms when it was dead-lettered"),
        },
        ["source_topic", "source_partition", "source_offset", "stage", "error", "value"],
    )


def _decimal(description: str) -> Schema:
    return {"type": "string", "pattern": "^[0-9]+$",
            "description": f"ASCII decimal digits: {description}"}


STAGE_STAMP = "^" + STAGE_PREFIX.replace(".", r"\.") + r"[a-z_]+\.(in|out)$"


def headers() -> Schema:
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}headers:{MAJOR}",
        "title": "Kafka headers of adstream messages",
        "description": "Header values are bytes; this schema describes them read as ASCII. "
                       "Headers a stage does not know are dropped on its outputs.",
        "type": "object",
        "properties": {
            SCHEMA: {"type": "string", "pattern": r"^ads\.[A-Za-z]+/[0-9]+\.[0-9]+$",
                       "description": "written for tools (ads.<Type>/<major>.<minor>), never "
                                      "read: the body's schema entry decides"},
            DEADLINE_MS: _decimal("epoch milliseconds. On a ScoreRequest it wins over the "
                                    "body's deadline_ms, and only this header lets a request "
                                    "be answered expired before its body is validated"),
            TRACE_ID: {"type": "string",
                         "description": "an opaque id carried unchanged to every derived "
                                        "message and the result (e.g. a W3C trace id); "
                                        "absent: the request id"},
            TRACEPARENT: {"type": "string",
                            "pattern": r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                            "description": "W3C trace context (version-trace_id-parent_id-"
                                           "flags), carried to every derived message; a "
                                           "stage that traces (tracing.otlp_endpoint set) "
                                           "makes its span a child of this one when the "
                                           "sampled flag is set and writes its own span "
                                           "here; absent: the feature stage may start a "
                                           "trace (tracing.sample_ratio)"},
            TRACESTATE: {"type": "string",
                           "description": "W3C tracestate (vendor entries), carried with "
                                          "traceparent"},
            SENT_MS: _decimal("epoch ms when the client produced the request"),
            CONTENT_TYPE: {"type": "string",
                             "description": f"the body's encoding: {JSON} (a JSON request "
                                            f"or result), or absent / {MSGPACK} for "
                                            "MessagePack; any other value is refused"},
            ACCEPT: {"type": "string",
                       "description": f"on a request: {JSON} asks for a JSON result (any "
                                      "other value: MessagePack); carried to the stage that "
                                      "answers"},
            ORIGIN: {"type": "string", "pattern": r"^.+\[[0-9]+\]@[0-9]+$",
                       "description": "set by the feature stage: where the request was read, "
                                      "topic[partition]@offset; a client's value is replaced"},
        },
        "patternProperties": {
            STAGE_STAMP: _decimal(
                "epoch ms when a stage took the input (in) and produced the output (out)"),
        },
    }


def documents() -> dict[str, Schema]:
    """File name -> JSON Schema, for every message and the headers."""
    return {
        "ScoreRequest.schema.json": score_request(),
        "ScoreResult.schema.json": score_result(),
        "ScoreRequest.json.schema.json": score_request(as_json=True),
        "ScoreResult.json.schema.json": score_result(as_json=True),
        "DeadLetter.schema.json": dead_letter(),
        "FeatureChunk.schema.json": feature_chunk(),
        "ScoreChunk.schema.json": score_chunk(),
        "headers.schema.json": headers(),
    }


def render(doc: Schema) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, doc in documents().items():
        path = directory / name
        path.write_text(render(doc))
        out.append(path)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m schemas.contract DIR", file=sys.stderr)
        sys.exit(2)
    for p in write(Path(sys.argv[1])):
        print(p)
