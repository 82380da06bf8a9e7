"""A fetch's requests decoded in one pass: the same requests, the same refusals, as one by one."""

import math
import re

import msgpack
import numpy as np
import pytest

from schemas import SchemaError, ScoreRequest, decode, encode
from schemas.columns import encode_array
from schemas.messages import encode_json
from schemas.request_batch import RequestBatch, decode_requests
from schemas.strings import StringColumn

LIMIT = 1 << 20


def _request(i: int, n: int = 5, **extra: np.ndarray) -> ScoreRequest:
    return ScoreRequest(
        request_id=f"r{i}", user_id=f"u{i}",
        candidates={"ad_id": np.arange(n, dtype=np.int64) + 100 * i,
                    "bid": np.linspace(0.1, 1, n).astype(np.float32),
                    "category": np.arange(n, dtype=np.int64) % 3, **extra},
        user={"city": "paris", "ctr_7d": 0.02}, context={"hour_of_day": 13},
        top_k=3, reply_to="replies" if i % 2 else None, deadline_ms=123 + i, priority=i % 3,
    )


def _mutated(req: ScoreRequest, mutate) -> bytes:
    d = msgpack.unpackb(encode(req), raw=False)
    mutate(d)
    return msgpack.packb(d, use_bin_type=True)


def _same(a: ScoreRequest, b: ScoreRequest) -> None:
    assert (a.request_id, a.user_id, a.user, a.context, a.top_k, a.reply_to, a.deadline_ms,
            a.priority) == (b.request_id, b.user_id, b.user, b.context, b.top_k, b.reply_to,
                            b.deadline_ms, b.priority)
    assert list(a.candidates) == list(b.candidates)
    for k, col in a.candidates.items():
        other = b.candidates[k]
        if isinstance(col, StringColumn):
            assert col.tolist() == other.tolist()
        else:
            assert col.dtype == other.dtype
            np.testing.assert_array_equal(col, other)


BAD = [
    lambda d: d.pop("request_id"),
    lambda d: d.update(top_k="ten"),
    lambda d: d["candidates"].pop("bid"),
    lambda d: d["candidates"].update(bid=encode_array(np.ones(2, np.float32))),
    lambda d: d["candidates"].update(ad_id=encode_array(np.ones(5, np.float32))),
    lambda d: d["candidates"].update(bid=["<f4", [5], b"\x00" * 7]),
    lambda d: d["candidates"].update(bid=encode_array(-np.ones(5, np.float32))),
    lambda d: d["candidates"].update(
        bid=encode_array(np.array([1, 2, math.nan, 1, 1], np.float32))),
    lambda d: d["candidates"].update(
        quality=encode_array(np.array([1, math.inf, 0, 1, 1], np.float32))),
    lambda d: d["candidates"].update(category=["<i8", [5.0], b"\x00" * 40]),
    lambda d: d.update(user={"city": [1, 2]}),
    lambda d: d.update(schema="ads.ScoreRequest/2.0"),
]


@pytest.mark.parametrize("mutate", BAD)
def test_a_bad_request_is_refused_alone_with_the_reason_a_single_decode_gives(mutate) -> None:
    good = [_request(i, quality=np.ones(5, np.float32)) for i in range(4)]
    bad = _mutated(_request(9, quality=np.ones(5, np.float32)), mutate)
    values = [encode(good[0]), encode(good[1]), bad, encode(good[2]), encode(good[3])]
    batch = decode_requests(values, [None] * 5, max_bytes=LIMIT)
    with pytest.raises(SchemaError) as alone:
        decode(bad, ScoreRequest, max_bytes=LIMIT)
    refused = batch.requests[2]
    assert isinstance(refused, SchemaError)
    assert (refused.field, refused.reason, refused.request_id, refused.reply_to) == (
        alone.value.field, alone.value.reason, alone.value.request_id, alone.value.reply_to)
    for got, want in zip([batch.requests[i] for i in (0, 1, 3, 4)], good, strict=True):
        assert isinstance(got, ScoreRequest)
        _same(got, want)
    # the joined columns are those of the four decoded requests, in order
    np.testing.assert_array_equal(
        batch.columns["ad_id"], np.concatenate([r.candidates["ad_id"] for r in good]))
    assert set(batch.columns) == {"ad_id", "bid", "category", "quality"}


def test_a_batch_decodes_to_the_requests_one_by_one_would_give() -> None:
    reqs = [_request(i, n=3 + i) for i in range(6)]
    batch = decode_requests([encode(r) for r in reqs], [None] * 6, max_bytes=LIMIT)
    for got, want in zip(batch.requests, reqs, strict=True):
        assert isinstance(got, ScoreRequest)
        _same(got, decode(encode(want), ScoreRequest))
        # a view on its own message, not on the joined copy (which goes with the batch)
        assert not np.shares_memory(got.candidates["bid"], batch.columns["bid"])
        assert not got.candidates["bid"].flags.owndata
    np.testing.assert_array_equal(
        batch.columns["bid"], np.concatenate([r.candidates["bid"] for r in reqs]))


def test_columns_some_requests_lack_or_type_differently_stay_per_request() -> None:
    reqs = [_request(0, quality=np.ones(5, np.float32)), _request(1),
            _request(2, quality=np.ones(5, np.float64)),
            _request(3, site=StringColumn.of(["a", "b", "c", "d", "e"]))]
    batch = decode_requests([encode(r) for r in reqs], [None] * 4, max_bytes=LIMIT)
    assert set(batch.columns) == {"ad_id", "bid", "category"}
    for got, want in zip(batch.requests, reqs, strict=True):
        assert isinstance(got, ScoreRequest)
        _same(got, want)


def test_json_oversized_and_garbage_values_are_decoded_alone() -> None:
    req = _request(1)
    values = [encode_json(req), encode(_request(2)), b"\xc1\xff\x00", encode(_request(3))]
    types = [b"application/json", None, None, None]
    batch = decode_requests(values, types, max_bytes=LIMIT)
    assert isinstance(batch.requests[0], ScoreRequest)
    _same(batch.requests[0], decode(values[0], ScoreRequest, content_type=types[0]))
    assert isinstance(batch.requests[2], SchemaError)
    assert "not valid MessagePack" in batch.requests[2].reason
    assert batch.columns == {}  # one request was decoded alone: no joined columns
    small = decode_requests([encode(req)], [None], max_bytes=100)
    assert isinstance(small.requests[0], SchemaError) and "100-byte" in small.requests[0].reason


def test_joining_batches_keeps_the_columns_every_part_has() -> None:
    a = decode_requests([encode(_request(0, quality=np.ones(5, np.float32)))], [None],
                        max_bytes=LIMIT)
    b = decode_requests([b"garbage"], [None], max_bytes=LIMIT)
    c = decode_requests([encode(_request(1))], [None], max_bytes=LIMIT)
    joined = RequestBatch.join([a, b, c])
    assert len(joined.requests) == 3 and isinstance(joined.requests[1], SchemaError)
    assert set(joined.columns) == {"ad_id", "bid", "category"}
    np.testing.assert_array_equal(joined.columns["ad_id"], np.r_[np.arange(5), np.arange(5) + 100])


def test_bench_decode_prints_each_variant_and_its_ratio(capsys) -> None:
    from loadtest import bench_decode

    assert bench_decode.main(["--requests", "24", "--sizes", "1,8", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    numbers = [[float(x) for x in re.findall(r"\d+\.\d+", ln)] for ln in lines]
    decodes = [n for ln, n in zip(lines, numbers, strict=True) if ln.startswith("decode ")]
    plans = [n for ln, n in zip(lines, numbers, strict=True) if ln.startswith("plan over")]
    assert len(decodes) == 3 and len(plans) == 2
    alone = decodes[0][0]
    for t, ratio in decodes[1:]:
        assert t > 0 and ratio == pytest.approx(alone / t, abs=0.01)
    for joined, apart, ratio in plans:
        assert joined > 0 and ratio == pytest.approx(apart / joined, abs=0.01)


def test_the_plan_over_joined_columns_equals_the_plan_over_each_requests_own(model_repo) -> None:
    from loadtest.generate import generate
    from schemas.json_form import request_from_json
    from workers.features.spec import FeaturePipeline
    from workers.scoring.repository import load_model

    c = load_model(model_repo, "ctr").config
    plan = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features), None)
    reqs = [request_from_json(d, 0) for d in generate(12, candidates="uniform:1,40", seed=3)
            if "candidates" in d]
    # one request without a candidate column the plan reads: that column is gathered
    d = msgpack.unpackb(encode(reqs[5]), raw=False)
    d["candidates"].pop("quality")
    values = [encode(r) for r in reqs]
    values[5] = msgpack.packb(d, use_bin_type=True)
    batch = decode_requests(values, [None] * len(values), max_bytes=LIMIT)
    assert "quality" not in batch.columns and "ad_id" in batch.columns
    decoded = [r for r in batch.requests if isinstance(r, ScoreRequest)]
    assert len(decoded) == len(values)
    dense, sparse = plan.batch(decoded, batch.columns)
    alone = [plan.batch([decode(v, ScoreRequest)]) for v in values]
    np.testing.assert_array_equal(dense, np.concatenate([a for a, _ in alone]))
    np.testing.assert_array_equal(sparse, np.concatenate([b for _, b in alone]))
