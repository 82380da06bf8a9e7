import math

import msgpack
import numpy as np
import pytest

from schemas import (
    DeadLetter,
    FeatureChunk,
    SchemaError,
    ScoreChunk,
    ScoreRequest,
    ScoreResult,
    decode,
    encode,
)
from schemas.columns import decode_array, encode_array
from schemas.json_form import request_from_json


def _request(n: int = 5) -> ScoreRequest:
    return ScoreRequest(
        request_id="r1", user_id="u1",
        candidates={"ad_id": np.arange(n, dtype=np.int64),
                    "bid": np.linspace(0.1, 1, n).astype(np.float32),
                    "category": np.arange(n, dtype=np.int64) % 3},
        user={"city": "paris", "ctr_7d": 0.02}, context={"hour_of_day": 13},
        top_k=3, reply_to="replies", deadline_ms=123, priority=2,
    )


def _wire(req: ScoreRequest) -> dict:
    return msgpack.unpackb(encode(req), raw=False)


def test_request_round_trip_is_columnar_and_zero_copy() -> None:
    raw = encode(_request())
    back = decode(raw, ScoreRequest)
    assert back.request_id == "r1" and back.top_k == 3 and back.reply_to == "replies"
    assert back.user == {"city": "paris", "ctr_7d": 0.02}
    np.testing.assert_array_equal(back.candidates["ad_id"], np.arange(5))
    assert back.candidates["bid"].dtype == np.float32
    # decoded columns are views on the message bytes, not copies
    assert not back.candidates["ad_id"].flags.owndata
    base = back.candidates["ad_id"]
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, (bytes, memoryview))


def test_every_message_type_round_trips() -> None:
    n = 4
    fc = FeatureChunk(request_id="r", chunk=1, n_chunks=2, n_candidates=8, top_k=2,
                      reply_to=None, deadline_ms=5, ad_id=np.arange(n, dtype=np.int64),
                      bid=np.ones(n, np.float32), dense=np.ones((n, 13), np.float32),
                      sparse=np.zeros((n, 26), np.int64))
    back = decode(encode(fc), FeatureChunk)
    assert back.dense.shape == (4, 13) and back.chunk == 1 and back.n_chunks == 2
    sc = ScoreChunk(request_id="r", chunk=0, n_chunks=1, n_candidates=n, top_k=2, reply_to="x",
                    deadline_ms=None, ad_id=np.arange(n, dtype=np.int64),
                    bid=np.ones(n, np.float32), score=np.full(n, 0.5, np.float32))
    assert decode(encode(sc), ScoreChunk).score.tolist() == [0.5] * 4
    res = ScoreResult("r", "ok", ad_id=np.array([3], np.int64), bid=np.array([2.0], np.float32),
                      score=np.array([0.25], np.float32), n_candidates=9, n_scored=9)
    j = decode(encode(res), ScoreResult).to_json()
    assert j["ads"] == [{"ad_id": 3, "score": 0.25, "bid": 2.0, "expected_value": 0.5}]
    dl = DeadLetter("ads.requests", 3, 42, "features", "bad", b"\x00", key=b"k")
    back_dl = decode(encode(dl), DeadLetter)
    assert (back_dl.source_partition, back_dl.source_offset, back_dl.value) == (3, 42, b"\x00")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("request_id"), "request_id"),
        (lambda d: d.update(user_id=17), "user_id"),
        (lambda d: d.update(top_k="ten"), "top_k"),
        (lambda d: d.update(top_k=0), "top_k"),
        (lambda d: d["candidates"].pop("bid"), "candidates.bid"),
        (lambda d: d["candidates"].update(bid=encode_array(np.ones(2, np.float32))),
         "candidates.bid"),
        (lambda d: d["candidates"].update(ad_id=encode_array(np.ones(5, np.float32))),
         "candidates.ad_id"),
        (lambda d: d["candidates"].update(bid=["<f4", [5], b"\x00" * 7]), "candidates.bid"),
        (lambda d: d["candidates"].update(bid=["<U4", [5], b"\x00" * 20]), "candidates.bid"),
        (lambda d: d["candidates"].update(
            bid=encode_array(np.array([1, 2, math.nan, 1, 1], np.float32))), "candidates.bid[2]"),
        (lambda d: d.update(user={"city": [1, 2]}), "user.city"),
        (lambda d: d.update(schema="ads.ScoreRequest/2.0"), "schema"),
        (lambda d: d.update(schema="ads.ScoreChunk/1.0"), "schema"),
    ],
)
def test_invalid_request_names_the_field(mutate, field) -> None:
    d = _wire(_request())
    mutate(d)
    with pytest.raises(SchemaError) as info:
        decode(msgpack.packb(d, use_bin_type=True), ScoreRequest)
    assert info.value.field == field
    if field != "request_id":
        assert info.value.request_id == "r1"  # the client can still be told "rejected"


def test_newer_minor_version_with_unknown_fields_is_accepted() -> None:
    d = _wire(_request())
    d["schema"] = "ads.ScoreRequest/1.7"
    d["experiment"] = {"arm": 3}
    assert decode(msgpack.packb(d, use_bin_type=True), ScoreRequest).request_id == "r1"


def test_garbage_and_oversized_messages_are_rejected_clearly() -> None:
    with pytest.raises(SchemaError, match="not valid MessagePack"):
        decode(b"\xc1\xff\x00", ScoreRequest)
    with pytest.raises(SchemaError, match="top level"):
        decode(msgpack.packb([1, 2]), ScoreRequest)
    with pytest.raises(SchemaError, match="over the 100-byte limit"):
        decode(encode(_request()), ScoreRequest, max_bytes=100)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    a = np.arange(3, dtype=">i8")
    back = decode_array(encode_array(a), "x")
    assert back.dtype.str == "<i8" and back.tolist() == [0, 1, 2]


def test_json_form_accepts_rows_or_columns_and_names_bad_values() -> None:
    rows = {"request_id": "j", "user_id": "u", "timeout_ms": 500,
            "candidates": [{"ad_id": 1, "bid": 0.5}, {"ad_id": 2, "bid": 1.5}]}
    req = request_from_json(rows, now_ms=1000)
    assert req.deadline_ms == 1500 and req.candidates["ad_id"].dtype == np.int64
    cols = {"request_id": "j", "user_id": "u", "candidates": {"ad_id": [1, 2], "bid": [1, 2]}}
    assert request_from_json(cols, 0).candidates["bid"].dtype == np.float32
    bad = {"request_id": "j", "user_id": "u",
           "candidates": [{"ad_id": 1, "bid": 0.5}, {"ad_id": "x", "bid": 1.0}]}
    with pytest.raises(SchemaError) as info:
        request_from_json(bad, 0)
    assert info.value.field == "candidates.ad_id[1]"


def test_peek_request_reads_the_address_without_the_columns() -> None:
    import msgpack

    from schemas.messages import peek_request

    req = ScoreRequest("r-1", "u", {"ad_id": np.arange(7, dtype=np.int64),
                                    "bid": np.ones(7, np.float32)}, reply_to="mine")
    addr = peek_request(encode(req))
    assert addr is not None and (addr.request_id, addr.reply_to, addr.n_candidates) == (
        "r-1", "mine", 7)
    # an envelope that is not a ScoreRequest, or has no usable id, is left to the full decode
    assert peek_request(b"{not msgpack") is None
    assert peek_request(msgpack.packb({"schema": "ads.ScoreChunk/1.0", "request_id": "x"})) is None
    assert peek_request(msgpack.packb({"schema": "ads.ScoreRequest/1.0", "request_id": 5})) is None
    assert peek_request(encode(req), max_bytes=10) is None
    # broken columns do not stop the address from being read (n unknown: 0)
    d = msgpack.unpackb(encode(req))
    d["candidates"] = "junk"
    assert peek_request(msgpack.packb(d)) == type(addr)("r-1", "mine", 0)
