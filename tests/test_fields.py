"""A message declared once: the wire form comes from its fields' codecs (schemas.fields)."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from schemas.errors import SchemaError
from schemas.fields import Int, OptInt, Text, WireMessage, column, wire, wire_form
from schemas.messages import FeatureChunk, ScoreChunk, ScoreRequest


@wire_form
@dataclass(eq=False)
class _Probe(WireMessage):
    TYPE: ClassVar[str] = "Probe"
    name: str = wire(Text())
    index: int = wire(Int(below="count"))  # checked after count, though declared before it
    count: int = wire(Int(lo=1, hi=5))
    rows: np.ndarray = column("<i8")
    score: np.ndarray = column("<f4", rows="rows")
    note: str | None = wire(Text(required=False), default=None)
    seen: int = wire(Int(), default=3)
    age: int | None = wire(OptInt(), default=None)


def test_the_map_follows_the_declaration_and_reads_back_the_same_fields() -> None:
    p = _Probe("a", 1, 2, np.arange(2, dtype=np.int64), np.ones(2, np.float32), note="n")
    wire_map = p.to_wire()
    assert list(wire_map) == ["name", "index", "count", "rows", "score", "note", "seen", "age"]
    back = _Probe.from_wire(wire_map)
    assert (back.name, back.index, back.count, back.note, back.seen, back.age) == (
        "a", 1, 2, "n", 3, None)
    assert back.rows.tolist() == [0, 1] and back.score.dtype == np.float32
    assert _Probe.WIRE.to_json_map(p)["score"] == [1.0, 1.0]


@pytest.mark.parametrize(("change", "field", "problem"), [
    ({"count": 9, "index": 99}, "count", "9 is outside [1, 5]"),  # the bound first
    ({"index": 2}, "index", "2 is outside [0, 1]"),
    ({"seen": None}, "seen", "missing required field"),  # a default fills only a missing key
    ({"score": [1.0]}, "score", "expected a column [dtype, shape, bytes]"),
])
def test_each_check_names_its_field_in_dependency_order(change: dict[str, object], field: str,
                                                        problem: str) -> None:
    wire_map = _Probe("a", 1, 2, np.arange(2, dtype=np.int64),
                      np.ones(2, np.float32)).to_wire()
    with pytest.raises(SchemaError) as info:
        _Probe.from_wire({**wire_map, **change})
    assert (info.value.field, info.value.problem) == (field, problem)


def test_a_field_without_a_codec_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="declare forgotten with wire"):
        @wire_form
        @dataclass
        class _Bad(WireMessage):
            name: str = wire(Text())
            forgotten: int = 0


def test_frame_columns_and_positional_arguments_come_from_the_declaration() -> None:
    assert FeatureChunk.COLUMNS == {"ad_id": ("<i8", 1), "bid": ("<f4", 1),
                                    "dense": ("<f4", 2), "sparse": ("<i8", 2)}
    assert ScoreChunk.COLUMNS == {"ad_id": ("<i8", 1), "bid": ("<f4", 1), "score": ("<f4", 1)}
    assert "ad_id" not in ScoreChunk.WIRE.to_map(ScoreChunk("r", 0, 1, 1, 1, None, None))
    cands = {"ad_id": np.arange(2, dtype=np.int64), "bid": np.ones(2, np.float32)}
    req = ScoreRequest("r", "u", cands, 4)  # candidates third, top_k fourth, as before
    assert (req.candidates is cands, req.top_k) == (True, 4)
    assert list(req.to_wire())[:5] == ["request_id", "user_id", "user", "context", "candidates"]
