"""The published JSON Schema contract: current, valid, and in agreement with the codec."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest

from pipeline.headers import ORIGIN, carry, int_header, now_ms, stage_stamps
from pipeline.transport.base import Record
from schemas import contract
from schemas.errors import SchemaError
from schemas.messages import (
    FRAME_MAGIC,
    FeatureChunk,
    ScoreChunk,
    ScoreRequest,
    ScoreResult,
    decode,
    encode,
)
from workers.client import request_message
from workers.replies import dead_letter, status_result
from workers.request_ids import Origin

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract"


def _bin(validator: Any, value: str, instance: Any, schema: Any) -> Any:
    if value == "bin" and not isinstance(instance, bytes):
        yield jsonschema.ValidationError(f"{instance!r} is not MessagePack bin")


# the one extension keyword: JSON has no bytes type, MessagePack does
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-msgpack": _bin})


def validator(name: str) -> Any:
    return Validator(json.loads((CONTRACT / name).read_text()))


def unpacked(data: bytes) -> Any:
    """The MessagePack map of a message (of a chunk frame: its header)."""
    if data[:4] == FRAME_MAGIC:
        data = data[8:8 + int.from_bytes(data[4:8], "little")]
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def request(**kw: Any) -> ScoreRequest:
    n = 5
    cands = {"ad_id": np.arange(100, 100 + n, dtype=np.int64),
             "bid": np.linspace(0.1, 2.0, n).astype(np.float32),
             "category": np.arange(n, dtype=np.int32),
             "quality": np.full(n, 0.5, np.float64),
             "flag": np.ones(n, np.bool_), "tiny": np.arange(n, dtype=np.uint8)}
    return ScoreRequest(request_id="r-1", user_id="u-7", candidates=cands,
                        user={"age_bucket": 3, "ctr_7d": 0.02, "segment": "s", "vip": True},
                        context={"hour_of_day": 13}, **kw)


def test_checked_in_contract_is_what_the_code_generates() -> None:
    docs = contract.documents()
    assert sorted(p.name for p in CONTRACT.glob("*.json")) == sorted(docs)
    for name, doc in docs.items():
        assert (CONTRACT / name).read_text() == contract.render(doc), (
            f"docs/contract/{name} is stale: run scripts/update-contract")


@pytest.mark.parametrize("name", sorted(contract.documents()))
def test_every_document_is_a_valid_draft_2020_12_schema(name: str) -> None:
    doc = json.loads((CONTRACT / name).read_text())
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)


def _messages() -> list[tuple[str, bytes]]:
    rec = Record("ads.requests", 2, 41, b"u-7", encode(request()), {})
    chunk_kw: dict[str, Any] = {
        "request_id": "r-1", "chunk": 1, "n_chunks": 2, "n_candidates": 5, "top_k": 3,
        "reply_to": "my.replies", "deadline_ms": 1_700_000_000_000,
        "ad_id": np.arange(2, dtype=np.int64), "bid": np.ones(2, np.float32)}
    return [
        ("ScoreRequest", encode(request())),
        ("ScoreRequest", encode(request(reply_to="my.replies", deadline_ms=1_700_000_000_000,
                                        top_k=3, priority=9))),
        ("FeatureChunk", encode(FeatureChunk(**chunk_kw, priority=2,
                                             dense=np.zeros((2, 13), np.float32),
                                             sparse=np.zeros((2, 26), np.int64)))),
        ("ScoreChunk", encode(ScoreChunk(**chunk_kw, score=np.full(2, 0.1, np.float32)))),
        ("ScoreChunk", encode(ScoreChunk(**{**chunk_kw, "ad_id": np.zeros(0, np.int64),
                                            "bid": np.zeros(0, np.float32)},
                                         status="expired"))),
        ("ScoreResult", encode(ScoreResult("r-1", "ok", ad_id=np.array([3, 1], np.int64),
                                           bid=np.array([1.0, 2.0], np.float32),
                                           score=np.array([0.5, 0.2], np.float32),
                                           n_candidates=5, n_scored=5))),
        ("ScoreResult", status_result("r-1", "rejected", "ads.results",
                                      reason="user_id: expected a non-empty string").value),
        ("DeadLetter", dead_letter(rec, SchemaError("user_id", "bad", request_id="r-1"),
                                   "features", "ads.dlq").value),
        ("DeadLetter", dead_letter(Record("ads.scores", 0, 3, None, b"\xc1", {"a": b"b"}),
                                   ValueError("boom"), "aggregator", "ads.dlq").value),
    ]


@pytest.mark.parametrize(("type_name", "data"), _messages(),
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(_messages())])
def test_real_encoded_messages_validate_against_their_schema(type_name: str, data: bytes
                                                             ) -> None:
    v = validator(f"{type_name}.schema.json")
    errors = [e.message for e in v.iter_errors(unpacked(data))]
    assert errors == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return mutate


_DELETE = object()
_REQUEST_MUTATIONS = {
    "user_id is an integer": _set("user_id", 7),
    "request_id is empty": _set("request_id", ""),
    "request_id is too long": _set("request_id", "x" * 257),
    "no schema entry": _set("schema", _DELETE),
    "another major version": _set("schema", "ads.ScoreRequest/2.0"),
    "another type's schema": _set("schema", "ads.ScoreResult/1.1"),
    "column bytes sent as msgpack str": _set("candidates.quality", ["<f8", [5], "x" * 40]),
    "a 2-D column": _set("candidates.quality", ["<f4", [5, 1], b"\0" * 20]),
    "a string dtype": _set("candidates.category", ["<U6", [5], b"\0" * 120]),
    "a big-endian dtype": _set("candidates.category", [">i4", [5], b"\0" * 20]),
    "zero candidates": _set("candidates", {"ad_id": ["<i8", [0], b""],
                                           "bid": ["<f4", [0], b""]}),
    "float ad ids": _set("candidates.ad_id", ["<f8", [5], b"\0" * 40]),
    "integer bids": _set("candidates.bid", ["<i4", [5], b"\0" * 20]),
    "no bid column": _set("candidates.bid", _DELETE),
    "top_k 0": _set("top_k", 0),
    "top_k null": _set("top_k", None),
    "top_k too large": _set("top_k", 10_001),
    "priority 10": _set("priority", 10),
    "deadline a string": _set("deadline_ms", "1700000000000"),
    "reply_to an empty string": _set("reply_to", ""),
    "a user feature that is a list": _set("user.segment", [1, 2]),
}


@pytest.mark.parametrize("case", sorted(_REQUEST_MUTATIONS))
def test_what_the_reader_refuses_the_schema_refuses(case: str) -> None:
    d = unpacked(encode(request()))
    _REQUEST_MUTATIONS[case](d)
    data = msgpack.packb(d, use_bin_type=True)
    with pytest.raises(SchemaError):
        decode(data, ScoreRequest)
    assert not validator("ScoreRequest.schema.json").is_valid(unpacked(data)), case


def test_what_the_reader_accepts_the_schema_accepts_with_optional_fields_left_out() -> None:
    d = unpacked(encode(request()))
    for key in ("user", "context", "top_k", "reply_to", "deadline_ms", "priority"):
        del d[key]
    d["schema"] = "ads.ScoreRequest/1.7"  # a later minor version
    d["added_later"] = {"any": "thing"}
    data = msgpack.packb(d, use_bin_type=True)
    assert decode(data, ScoreRequest).top_k == 10
    assert validator("ScoreRequest.schema.json").is_valid(unpacked(data))


@pytest.mark.parametrize("mutate", [_set("status", "great"),
                                    _set("ad_id", ["<i4", [0], b""]),
                                    _set("score", ["<f8", [0], b""]),
                                    _set("request_id", _DELETE)])
def test_results_the_reader_refuses_the_schema_refuses(mutate: Callable[..., None]) -> None:
    d = unpacked(status_result("r-1", "rejected", "ads.results", reason="x").value)
    mutate(d)
    data = msgpack.packb(d, use_bin_type=True)
    with pytest.raises(SchemaError):
        decode(data, ScoreResult)
    assert not validator("ScoreResult.schema.json").is_valid(unpacked(data))


def _text(headers: dict[str, bytes]) -> dict[str, str]:
    return {k: v.decode("ascii") for k, v in headers.items()}


def test_headers_of_real_messages_validate() -> None:
    v = validator("headers.schema.json")
    req = request(deadline_ms=now_ms() + 1000)
    sent = request_message(req, "ads.requests").headers
    derived = carry({**sent, ORIGIN: Origin("ads.requests", 2, 41).header(),
                       **stage_stamps("features", now_ms())}, "ads.FeatureChunk/1.1")
    replied = status_result("r-1", "expired", "ads.results", headers=derived).headers
    for headers in (sent, derived, replied):
        assert [e.message for e in v.iter_errors(_text(headers))] == []
    assert set(sent) == {"schema", "deadline_ms", "trace_id", "sent_ms"}
    assert {"origin", "ts.features.in", "ts.features.out"} <= set(replied)


@pytest.mark.parametrize("bad", [{"deadline_ms": "1.7e12"}, {"sent_ms": "-5"},
                                 {"schema": "ScoreRequest"}, {"ts.features.in": "soon"},
                                 {"origin": "ads.requests"}, {"traceparent": "00-abc-01"}])
def test_headers_not_in_the_documented_encoding_are_refused(bad: dict[str, str]) -> None:
    assert not validator("headers.schema.json").is_valid(bad)
    if "deadline_ms" in bad:  # and the pipeline ignores such a deadline header
        assert int_header({"deadline_ms": bad["deadline_ms"].encode()}, "deadline_ms") is None


def test_a_reader_would_see_every_dtype_the_codec_allows() -> None:
    doc = json.loads((CONTRACT / "ScoreRequest.schema.json").read_text())
    numeric, strings = doc["properties"]["candidates"]["additionalProperties"]["anyOf"]
    from schemas.columns import ALLOWED_DTYPES

    assert sorted(numeric["prefixItems"][0]["enum"]) == sorted(ALLOWED_DTYPES) == sorted(
        ["<f4", "<f8", "<i4", "<i8", "<u8", "|b1", "|i1", "|u1"])
    assert strings["prefixItems"][0] == {"const": "utf8", "description": "a string column"}
