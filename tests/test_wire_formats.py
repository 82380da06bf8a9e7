"""String categorical columns and the JSON encoding of requests and results."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest

from loadtest.generate import generate
from pipeline.headers import ACCEPT, CONTENT_TYPE, make
from pipeline.config import amended
from pipeline.transport import Outgoing
from pipeline.transport.memory import MemoryBroker
from schemas.encoding import JSON
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import (
    DeadLetter,
    ScoreRequest,
    ScoreResult,
    decode,
    encode,
    encode_json,
    schema_name,
)
from schemas.strings import StringColumn, category_id, category_ids
from workers.client import ResultWaiter, request_message
from workers.features.spec import FeaturePipeline
from workers.features.transforms import hash_scalars
from workers.roles import THREE_HOPS, ensure_topics, run_roles, transport_for
from workers.scoring.repository import load_model
from workers.settings import Settings

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract"
_names = itertools.count()
STRING_COLUMNS = ("advertiser_id", "landing_domain", "creative_format")


def test_category_ids_are_fnv1a_64_and_decimal_strings_are_their_integer() -> None:
    col = StringColumn.of(["", "a", "foobar", "17", "-5", "007", "-", "1a", "--1",
                           "9" * 18, "1" * 19, "é"])
    ids = category_ids(col).view(np.uint64).tolist()
    # FNV-1a 64 test vectors (Fowler/Noll/Vo): "", "a", "foobar"
    assert ids[:3] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    assert category_ids(col).tolist()[3:6] == [17, -5, 7]
    fnv = _fnv1a_64_reference
    assert ids[6:] == [fnv("-"), fnv("1a"), fnv("--1"), 10**18 - 1, fnv("1" * 19), fnv("é")]


def test_one_string_gets_the_category_id_its_column_gives() -> None:
    values = ["", "a", "foobar", "17", "-5", "007", "-", "1a", "--1", "-0", "9" * 18,
              "-" + "9" * 18, "1" * 19, "é", "日本", "x" * 256, " 1", "1 ", "+1", "١٢"]
    values += [f"u{i}" for i in range(200)] + [str(i * 7919) for i in range(200)]
    want = category_ids(StringColumn.of(values)).tolist()
    assert [category_id(v) for v in values] == want
    # hash_scalars takes the scalar path for a few strings and the column path for many
    few, many = hash_scalars(values[:20]), hash_scalars(values)
    assert few.tolist() == many[:20].tolist()
    with pytest.raises(ValueError):
        category_id("x" * 257)


def _fnv1a_64_reference(text: str) -> int:
    """FNV-1a 64 one byte at a time, as a client in any language would write it."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def _string_request(req: ScoreRequest, rng: np.random.Generator) -> tuple[ScoreRequest,
                                                                          ScoreRequest]:
    """``req`` with string categoricals (candidate columns, user.city, context.os), and the
    same request with each string replaced by its category id as an integer."""
    strs, ints = dict(req.candidates), dict(req.candidates)
    for name in STRING_COLUMNS:
        values = [f"{name}-{v}.example" for v in req.candidates[name].tolist()]
        if name == "creative_format":  # some decimal strings: they are their integer
            values = [str(v) for v in req.candidates[name].tolist()]
        strs[name] = StringColumn.of(values)
        ints[name] = category_ids(strs[name])
    city = f"city-{rng.integers(0, 50)}-münchen"
    user_s, user_i = {**req.user, "city": city}, {**req.user, "city": int(
        category_ids(StringColumn.of([city]))[0])}
    as_str = ScoreRequest(req.request_id + "s", req.user_id, strs, user=user_s,
                          context={**req.context, "os": "android"}, top_k=req.top_k,
                          deadline_ms=req.deadline_ms)
    as_int = ScoreRequest(req.request_id + "i", req.user_id, ints, user=user_i,
                          context={**req.context, "os": int(
                              category_ids(StringColumn.of(["android"]))[0])},
                          top_k=req.top_k, deadline_ms=req.deadline_ms)
    return as_str, as_int


def _requests(n: int, seed: int) -> list[ScoreRequest]:
    now = int(time.time() * 1000)
    return [request_from_json(d, now) for d in
            generate(n, seed=seed, candidates="uniform:5,150", timeout_ms=30_000)]


def test_string_columns_survive_the_wire_and_give_the_features_of_their_ids(model_repo
                                                                            ) -> None:
    c = load_model(model_repo, "ctr").config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    rng = np.random.default_rng(3)
    pairs = [_string_request(r, rng) for r in _requests(6, seed=21)]
    strs = [decode(encode(s), ScoreRequest) for s, _ in pairs]  # through the wire
    ints = [i for _, i in pairs]
    assert strs[0].candidates["landing_domain"].tolist() == \
        pairs[0][0].candidates["landing_domain"].tolist()
    d_s, s_s = pipe.batch(strs)  # one plan call over the fetch
    d_i, s_i = pipe.batch(ints)
    np.testing.assert_array_equal(s_s, s_i)
    np.testing.assert_array_equal(d_s, d_i)
    for req in strs:  # the one-feature-at-a-time reference agrees
        np.testing.assert_array_equal(pipe(req)[1], pipe.reference(req)[1])
    other = [dict(r.candidates) for r in strs]
    other[0]["landing_domain"] = StringColumn.of(
        ["x" + v for v in strs[0].candidates["landing_domain"].tolist()])
    changed = pipe(ScoreRequest("o", strs[0].user_id, other[0], user=strs[0].user,
                                context=strs[0].context))[1]
    assert (changed != pipe(strs[0])[1]).any()  # the strings do reach the features


@pytest.fixture
def settings(model_repo):
    name = f"wire{next(_names)}"
    yield amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                  scorer={"model_repo": str(model_repo)}, topics={"partitions": 2})
    MemoryBroker.drop(name)


def _json_message(req: ScoreRequest, topic: str, *, accept: bool = True) -> Outgoing:
    headers = make(schema_name(ScoreRequest.TYPE), trace_id=req.request_id)
    headers[CONTENT_TYPE] = JSON.encode()
    if accept:
        headers[ACCEPT] = JSON.encode()
    return Outgoing(topic, encode_json(req), key=req.user_id.encode(), headers=headers)


async def _serve(settings: Settings, messages: list[Outgoing], ids: list[str]
                 ) -> tuple[dict[str, ScoreResult], dict[str, dict[str, bytes]], list[Any]]:
    """Run the three roles, send ``messages``, wait for the answers to ``ids``; return the
    results, their headers, and what reached the dead-letter topic."""
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop = asyncio.Event()
    roles = asyncio.create_task(run_roles(THREE_HOPS, settings, stop, transport))
    producer = transport.producer()
    async with ResultWaiter(transport, settings.topics.results) as waiter:
        futs = {rid: waiter.expect(rid) for rid in ids}
        await asyncio.gather(*[await producer.send(m) for m in messages])
        await asyncio.wait(futs.values(), timeout=30)
        headers = dict(waiter.headers)
    stop.set()
    await roles
    broker = MemoryBroker.get(settings.kafka.bootstrap.removeprefix("memory://"))
    dlq = [decode(r.value, DeadLetter) for p in broker.topics[settings.topics.dlq] for r in p]
    return {rid: f.result() for rid, f in futs.items() if f.done()}, headers, dlq


async def test_string_and_json_requests_get_the_answers_of_their_msgpack_integer_twins(
        settings) -> None:
    rng = np.random.default_rng(5)
    base = _requests(8, seed=22)
    pairs = [_string_request(r, rng) for r in base]
    topic = settings.topics.requests
    plain = [request_message(r, topic) for r in base]
    as_json = [_json_message(dataclass_copy(r, "j"), topic) for r in base]
    strs = [request_message(s, topic) for s, _ in pairs]
    ints = [request_message(i, topic) for _, i in pairs]
    json_strs = [_json_message(dataclass_copy(s, "J"), topic) for s, _ in pairs]
    ids = [r.request_id for r in base] + [r.request_id + "j" for r in base] + \
        [s.request_id for s, _ in pairs] + [i.request_id for _, i in pairs] + \
        [s.request_id + "J" for s, _ in pairs]
    results, headers, dlq = await _serve(settings, plain + as_json + strs + ints + json_strs,
                                         ids)
    assert dlq == [] and len(results) == len(ids)
    for r, (s, i) in zip(base, pairs, strict=True):
        for a, b in ((r.request_id, r.request_id + "j"), (i.request_id, s.request_id),
                     (i.request_id, s.request_id + "J")):
            assert results[a].status == results[b].status == "ok"
            np.testing.assert_array_equal(results[a].ad_id, results[b].ad_id)
            np.testing.assert_array_equal(results[a].score, results[b].score)
            np.testing.assert_array_equal(results[a].bid, results[b].bid)
        assert headers[r.request_id + "j"][CONTENT_TYPE] == JSON.encode()
        assert CONTENT_TYPE not in headers[r.request_id]
    # string features change the scores (the twins are not just the plain requests)
    assert any((results[r.request_id].score != results[i.request_id].score).any()
               for r, (_, i) in zip(base, pairs, strict=True))


def dataclass_copy(req: ScoreRequest, suffix: str) -> ScoreRequest:
    return ScoreRequest(req.request_id + suffix, req.user_id, req.candidates, user=req.user,
                        context=req.context, top_k=req.top_k, deadline_ms=req.deadline_ms)


def test_a_json_result_decodes_and_validates_against_the_published_schema() -> None:
    res = ScoreResult("r-1", "ok", ad_id=np.array([7, 3], np.int64),
                      bid=np.array([1.25, 0.3], np.float32),
                      score=np.array([0.123456789, 0.5], np.float32), n_candidates=4,
                      n_scored=4)
    data = encode_json(res)
    doc = json.loads(data)
    assert doc["schema"] == "ads.ScoreResult/1.1" and doc["ad_id"] == [7, 3]
    back = decode(data, ScoreResult, content_type=b"application/json; charset=utf-8")
    np.testing.assert_array_equal(back.score, res.score)  # float32 values exactly
    assert back.score.dtype == np.float32 and back.ad_id.dtype == np.int64
    _validator("ScoreResult.json.schema.json").validate(doc)
    req = _string_request(_requests(1, seed=23)[0], np.random.default_rng(1))[0]
    _validator("ScoreRequest.json.schema.json").validate(json.loads(encode_json(req)))
    _msgpack_validator().validate(msgpack.unpackb(encode(req)))


def _validator(name: str) -> Any:
    return jsonschema.Draft202012Validator(json.loads((CONTRACT / name).read_text()))


def _msgpack_validator() -> Any:
    def is_bin(validator: Any, value: str, instance: Any, schema: Any) -> Any:
        if value == "bin" and not isinstance(instance, bytes):
            yield jsonschema.ValidationError(f"{instance!r} is not MessagePack bin")

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-msgpack": is_bin})
    return cls(json.loads((CONTRACT / "ScoreRequest.schema.json").read_text()))


def _wire(**candidates: Any) -> dict[str, Any]:
    d = {"schema": "ads.ScoreRequest/1.1", "request_id": "r-1", "user_id": "u1",
         "candidates": {"ad_id": ["<i8", [2], np.arange(2, dtype="<i8").tobytes()],
                        "bid": ["<f4", [2], np.ones(2, "<f4").tobytes()]}}
    d["candidates"].update(candidates)
    return d


_OFF = np.array([0, 3, 5], "<i4").tobytes()
BAD_STRING_COLUMNS = {
    "offsets of the wrong length": (
        ["utf8", [2], b"abcde", np.array([0, 5], "<i4").tobytes()],
        "candidates.dom: offsets have 8 bytes; 2 rows need 3 int32 (12 bytes)"),
    "offsets not starting at 0": (
        ["utf8", [2], b"abcde", np.array([1, 3, 5], "<i4").tobytes()],
        "candidates.dom: offsets[0] is 1, must be 0"),
    "decreasing offsets": (
        ["utf8", [2], b"abcde", np.array([0, 5, 3], "<i4").tobytes()],
        "candidates.dom[1]: offsets[2] = 3 is below offsets[1] = 5"),
    "offsets past the data": (
        ["utf8", [2], b"abcd", _OFF],
        "candidates.dom: offsets end at 5, but data has 4 bytes"),
    "invalid UTF-8": (
        ["utf8", [2], b"abc\xff\xfe", _OFF], "candidates.dom[1]: not valid UTF-8"),
    "a value cut inside a character": (
        ["utf8", [2], "aé€".encode(), np.array([0, 2, 6], "<i4").tobytes()],
        "candidates.dom[1]: not valid UTF-8 (starts inside a character)"),
    "a value over 256 bytes": (
        ["utf8", [2], b"a" * 300, np.array([0, 1, 300], "<i4").tobytes()],
        "candidates.dom[1]: 299 bytes; a string value is at most 256 bytes"),
    "data sent as msgpack str": (
        ["utf8", [2], "abcde", _OFF], "candidates.dom: data must be binary, got str"),
    "a 2-D shape": (["utf8", [2, 1], b"abcde", _OFF],
                    "candidates.dom: expected 1 dimension, got shape [2, 1]"),
    "no offsets": (["utf8", [2], b"abcde"],
                   'candidates.dom: a utf8 column is ["utf8", [n], data, offsets]'),
}


@pytest.mark.parametrize("case", sorted(BAD_STRING_COLUMNS))
def test_a_bad_string_column_is_refused_in_one_line_naming_it(case: str) -> None:
    column, reason = BAD_STRING_COLUMNS[case]
    with pytest.raises(SchemaError) as e:
        decode(msgpack.packb(_wire(dom=column), use_bin_type=True), ScoreRequest)
    assert str(e.value) == reason and "\n" not in reason
    assert not _msgpack_validator().is_valid(_unbin(_wire(dom=column))) or case in (
        "offsets of the wrong length", "offsets not starting at 0", "decreasing offsets",
        "offsets past the data", "invalid UTF-8", "a value cut inside a character",
        "a value over 256 bytes")  # rules a JSON Schema cannot state; the text says them


def _unbin(d: dict[str, Any]) -> Any:
    return msgpack.unpackb(msgpack.packb(d, use_bin_type=True))


# The same faults as MessagePack and as JSON give the same reason
_MSGPACK_VS_JSON = {
    "user_id an integer": ({"user_id": 7}, {"user_id": 7}),
    "no schema": ({"schema": None}, {"schema": None}),
    "top_k 0": ({"top_k": 0}, {"top_k": 0}),
    "NaN bid": ({"bid": ["<f4", [2], np.array([1, np.nan], "<f4").tobytes()]},
                {"bid": [1.0, float("nan")]}),
    "negative bid": ({"bid": ["<f8", [2], np.array([1, -1.0]).tobytes()]}, {"bid": [1, -1]}),
    "float ad ids": ({"ad_id": ["<f8", [2], np.ones(2).tobytes()]}, {"ad_id": [1.5, 2.5]}),
    "string ad ids": ({"ad_id": ["utf8", [2], b"ab", np.array([0, 1, 2], "<i4").tobytes()]},
                      {"ad_id": ["a", "b"]}),
    "rows differ": ({"dom": ["utf8", [1], b"a", np.array([0, 1], "<i4").tobytes()]},
                    {"dom": ["a"]}),
    "zero candidates": ({"ad_id": ["<i8", [0], b""], "bid": ["<f4", [0], b""]},
                        {"ad_id": [], "bid": []}),
    "too long a string": ({"dom": ["utf8", [2], b"a" * 258,
                                   np.array([0, 1, 258], "<i4").tobytes()]},
                          {"dom": ["a", "a" * 257]}),
}


@pytest.mark.parametrize("case", sorted(_MSGPACK_VS_JSON))
def test_json_requests_are_refused_with_the_messagepack_reason(case: str) -> None:
    wire_change, json_change = _MSGPACK_VS_JSON[case]
    packed = _wire()
    as_json = {"schema": "ads.ScoreRequest/1.1", "request_id": "r-1", "user_id": "u1",
               "candidates": {"ad_id": [0, 1], "bid": [1.0, 1.0]}}
    for d, change in ((packed, wire_change), (as_json, json_change)):
        for k, v in change.items():
            target = d if k in ("user_id", "schema", "top_k") else d["candidates"]
            if v is None:
                del target[k]
            else:
                target[k] = v
    with pytest.raises(SchemaError) as from_msgpack:
        decode(msgpack.packb(packed, use_bin_type=True), ScoreRequest)
    with pytest.raises(SchemaError) as from_json:
        decode(json.dumps(as_json).encode(), ScoreRequest, content_type=JSON)
    assert str(from_json.value) == str(from_msgpack.value)
    assert from_json.value.request_id == "r-1"


_HEAD = b'{"schema": "ads.ScoreRequest/1.1", "request_id": "r", "user_id": "u", '
_BAD_JSON = [
    (b'{"request_id": "r-1",', JSON,
     ("not valid JSON (Expecting property name enclosed in double quotes: line 1 column 22 "
      "(char 21))")),
    (b"[1, 2]", JSON, "expected a map at the top level, got list"),
    (_HEAD + b'"candidates": {"ad_id": [1], "bid": [1.0], "dom": [1, "a"]}}', JSON,
     ("candidates.dom: mixes integer and string values; a column holds numbers, booleans or "
      "strings")),
    (_HEAD + b'"candidates": {"ad_id": [1], "bid": [1.0], "x": [[1], [2]]}}', JSON,
     "candidates.x: holds array values; a column holds numbers, booleans or strings"),
    (_HEAD + b'"candidates": {"ad_id": 1, "bid": [1.0]}}', JSON,
     "candidates.ad_id: expected an array of numbers or strings, got integer"),
    (b"\x80", "text/csv",
     ("content-type: 'text/csv' is not supported; send application/msgpack (or no "
      "content-type header) or application/json")),
]


@pytest.mark.parametrize(("body", "content_type", "reason"), _BAD_JSON)
def test_a_bad_json_request_is_refused_in_one_line(body: bytes, content_type: str,
                                                   reason: str) -> None:
    with pytest.raises(SchemaError) as e:
        decode(body, ScoreRequest, content_type=content_type)
    assert str(e.value) == reason


async def test_bad_string_and_json_requests_reach_the_dead_letters_and_are_rejected(
        settings) -> None:
    topic = settings.topics.requests
    base = _requests(2, seed=24)
    bad_utf8 = msgpack.packb({**_wire(dom=["utf8", [2], b"abc\xff\xfe", _OFF]),
                              "request_id": "bad-utf8"}, use_bin_type=True)
    numeric = dict(base[0].candidates)
    numeric["ctr_7d"] = StringColumn.of(["0.5"] * base[0].n_candidates)  # a numeric feature
    strs_for_number = ScoreRequest("bad-numeric", "u1", numeric)
    bad_json = _json_message(ScoreRequest("bad-json", "u1", {
        "ad_id": np.arange(2), "bid": np.array([1.0, float("nan")])}), topic)
    messages = [Outgoing(topic, bad_utf8, key=b"u1", headers={}),
                request_message(strs_for_number, topic), bad_json]
    results, headers, dlq = await _serve(settings, messages,
                                         ["bad-utf8", "bad-numeric", "bad-json"])
    assert {rid: r.reason for rid, r in results.items()} == {
        "bad-utf8": "candidates.dom[1]: not valid UTF-8",
        "bad-numeric": "candidates.ctr_7d: a string column where a numeric feature needs "
                       "numbers",
        "bad-json": "candidates.bid[1]: NaN or infinity is not allowed"}
    assert {r.status for r in results.values()} == {"rejected"}
    assert sorted(d.error for d in dlq) == sorted(r.reason for r in results.values())
    assert headers["bad-json"][CONTENT_TYPE] == JSON.encode()  # it asked for JSON
    assert CONTENT_TYPE not in headers["bad-utf8"]


def test_string_traffic_is_the_same_requests_with_names_and_costs_are_measured(model_repo
                                                                               ) -> None:
    from loadtest.string_cost import measure

    ints = list(generate(3, seed=4, candidates="fixed:5"))
    strs = list(generate(3, seed=4, candidates="fixed:5", strings=True))
    assert [r["candidates"]["ad_id"] for r in strs] == [r["candidates"]["ad_id"] for r in ints]
    req = request_from_json(strs[0], 0)
    assert isinstance(req.candidates["landing_domain"], StringColumn)
    assert req.user["city"] == f"city-{ints[0]['user']['city']}"
    s = amended(Settings(), scorer={"model_repo": str(model_repo)})
    m = measure(s, requests=20, candidates=10, fetch=10, rounds=1)
    assert m["strings"].bytes_per_request > m["integers"].bytes_per_request
    assert m["features_ratio"] > 0 and m["integers"].scoring_us > 0


def test_dlq_show_decodes_a_json_dead_letter_as_json() -> None:
    from tools.operator_commands import value_json

    body = b'{"request_id": "r-1", "candidates": {"ad_id": ["x"]}}'
    assert value_json(body, JSON.encode()) == {"json": json.loads(body)}
    assert value_json(body)["raw"] == body.decode()  # without the header: not MessagePack


def test_a_long_user_string_is_refused_naming_its_field(model_repo) -> None:
    c = load_model(model_repo, "ctr").config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    ok = _requests(2, seed=25)
    bad = ScoreRequest("long", "u1", ok[0].candidates, user={"city": "x" * 300})
    with pytest.raises(SchemaError) as e:
        pipe.batch([ok[0], bad, ok[1]])
    assert str(e.value) == "user.city: 300 bytes; a categorical string is at most 256 bytes"
    with pytest.raises(SchemaError) as ref:
        pipe.reference(bad)
    assert str(ref.value) == str(e.value)
