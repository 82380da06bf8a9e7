"""Traffic files, recordings and arrival schedules of the load tester."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from loadtest import arrivals
from loadtest.generate import generate, write_jsonl
from loadtest.recording_file import RecordingWriter
from loadtest.traffic import ID_LEN, PLACEHOLDER, Traffic, TrafficError, request_id
from pipeline.transport.base import Record
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, decode, encode


def test_generated_file_is_encoded_once_with_a_slot_for_each_runs_request_id(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, generate(20, seed=4, candidates="uniform:5,40", timeout_ms=750))
    traffic = Traffic.load(path)
    assert len(traffic) == 20 and traffic.kind == "jsonl"
    assert traffic.has_arrival_times and traffic.at_ms[0] == 0
    assert (np.diff(traffic.at_ms) >= 0).all()
    assert (traffic.timeout_ms == 750).all()
    originals = [request_from_json(d, 0) for d in generate(20, seed=4, candidates="uniform:5,40")]
    for j, orig in enumerate(originals):
        rid = request_id("0123abcd", 10_000 + j)
        assert len(rid) == ID_LEN
        req = decode(traffic.body(j, rid.encode()), ScoreRequest)
        assert req.request_id == rid
        assert req.user_id == orig.user_id and traffic.keys[j] == orig.user_id.encode()
        assert req.deadline_ms is None  # set per send, in the deadline_ms header
        np.testing.assert_array_equal(req.candidates["ad_id"], orig.candidates["ad_id"])
        np.testing.assert_array_equal(req.candidates["bid"], orig.candidates["bid"])
        assert traffic.n_candidates[j] == orig.n_candidates


def test_bad_traffic_files_name_the_line_and_field(tmp_path: Path):
    good = json.dumps({"request_id": "a", "user_id": "u", "candidates":
                       {"ad_id": [1, 2], "bid": [0.5, 1.0]}})
    cases = {
        "nan bid": (good + "\n" + json.dumps({"request_id": "b", "user_id": "u", "candidates":
                    {"ad_id": [1], "bid": [float("nan")]}}), ":2: candidates.bid[0]"),
        "not json": ("{oops\n", ":1: not valid JSON"),
        "bad at_ms": (json.dumps({"request_id": "a", "user_id": "u", "at_ms": "soon",
                                  "candidates": {"ad_id": [1], "bid": [1.0]}}), ":1: at_ms"),
        "empty": ("", "the file is empty"),
        "binary": ("\x93\x01\x02", "neither JSON lines"),
    }
    for name, (text, mention) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        with pytest.raises(TrafficError, match=mention.replace("[", r"\[").replace("]", r"\]")):
            Traffic.load(path)
    with pytest.raises(TrafficError, match="cannot read"):
        Traffic.load(tmp_path / "missing.jsonl")


def test_recording_keeps_arrival_times_and_relative_deadlines(tmp_path: Path):
    path = tmp_path / "r.adrec"
    req = request_from_json({"request_id": "x", "user_id": "u1", "candidates":
                             {"ad_id": [1, 2, 3], "bid": [0.1, 0.2, 0.3]}}, 0)
    with RecordingWriter(path, {"topic": "t"}) as w:
        for i, ts in enumerate([1_000_250, 1_000_000, 1_000_100]):  # partitions interleave
            req.deadline_ms = ts + 400
            w.write(Record("t", i % 2, i, b"u1", encode(req), {}, ts), 0)
        w.write(Record("t", 0, 9, b"k", b"\xc1garbage", {}, 1_000_300), 0)
    traffic = Traffic.load(path)
    assert traffic.kind == "recording"
    assert traffic.at_ms.tolist() == [0.0, 100.0, 250.0]
    assert (traffic.timeout_ms == 400).all()
    assert len(traffic.skipped) == 1 and "record 4" in traffic.skipped[0]


def test_damaged_recording_is_reported(tmp_path: Path):
    path = tmp_path / "r.adrec"
    path.write_bytes(msgpack.packb({"format": "adstream.recording", "version": 9}))
    with pytest.raises(TrafficError, match="version 9"):
        Traffic.load(path)
    path.write_bytes(msgpack.packb({"format": "adstream.recording", "version": 1})
                     + msgpack.packb({"value": 3}))
    with pytest.raises(TrafficError, match="record 1: not a recorded record"):
        Traffic.load(path)


def test_placeholder_request_ids_never_collide_with_content(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"request_id": PLACEHOLDER, "user_id": PLACEHOLDER,
                                "candidates": {"ad_id": [1], "bid": [1.0]}}) + "\n")
    with pytest.raises(TrafficError, match="cannot place the request id"):
        Traffic.load(path)


def test_constant_rate_schedule_and_duration():
    s = arrivals.plan(np.zeros(3), rate=200.0, duration_s=2.0)
    assert len(s) == 400
    np.testing.assert_allclose(np.diff(s.offsets_s), 0.005)
    assert s.entries.tolist()[:7] == [0, 1, 2, 0, 1, 2, 0]


def test_poisson_schedule_has_exponential_gaps_and_is_deterministic():
    a = arrivals.plan(np.zeros(1), rate=1000.0, arrival="poisson", requests=20_000, seed=3)
    b = arrivals.plan(np.zeros(1), rate=1000.0, arrival="poisson", requests=20_000, seed=3)
    np.testing.assert_array_equal(a.offsets_s, b.offsets_s)
    gaps = np.diff(a.offsets_s)
    assert abs(gaps.mean() - 0.001) < 0.00005
    assert abs(gaps.std() - 0.001) < 0.0001  # exponential: std = mean
    d = arrivals.plan(np.zeros(1), rate=500.0, arrival="poisson", duration_s=4.0, seed=1)
    assert d.offsets_s[-1] < 4.0 and abs(len(d) - 2000) < 200


def test_recorded_gaps_are_scaled_by_speed_and_cycled():
    at = np.array([0.0, 100.0, 150.0, 400.0])
    s = arrivals.plan(at, speed=2.0, requests=6)
    np.testing.assert_allclose(s.offsets_s, [0, 0.05, 0.075, 0.2, 0.2 + 0.2 / 3,
                                             0.2 + 0.2 / 3 + 0.05])
    assert s.entries.tolist() == [0, 1, 2, 3, 0, 1]
    d = arrivals.plan(at, speed=1.0, duration_s=0.6)  # the second cycle starts at 0.533 s
    assert d.offsets_s[-1] < 0.6 and len(d) == 5


def test_bad_schedule_flags_are_explained():
    at = np.array([0.0, 10.0])
    for kwargs, mention in [
        ({"rate": 0.0}, "--rate must be > 0"),
        ({"rate": 5.0, "speed": 1.0}, "not both"),
        ({"speed": 1.0, "arrival": "poisson"}, "--arrival applies to --rate"),
        ({"duration_s": 1.0, "requests": 5}, "not both"),
        ({"rate": 1.0, "arrival": "bursty"}, "--arrival must be one of"),
    ]:
        with pytest.raises(ValueError, match=mention):
            arrivals.plan(at, **kwargs)
    with pytest.raises(ValueError, match="no arrival times"):
        arrivals.plan(np.array([np.nan, np.nan]), speed=1.0)
