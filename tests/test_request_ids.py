"""A reused request id is told apart from a redelivered record (same partition and offset)."""

import pytest

from pipeline.headers import ORIGIN, carry
from pipeline.transport.base import Record
from workers.request_ids import Origin, RequestIds, Seen

A = Origin("ads.requests", 3, 17)
B = Origin("ads.requests", 5, 20)


def test_first_sight_is_new_and_the_same_origin_again_is_a_repeat() -> None:
    ids = RequestIds(10)
    assert ids.check("r1", A) is Seen.NEW
    assert ids.check("r1", A) is Seen.REPEAT
    assert ids.check("r1", Origin("ads.requests", 3, 17)) is Seen.REPEAT
    assert ids.first("r1") == A


def test_another_request_with_a_used_id_is_reused_once_then_a_repeat_of_that() -> None:
    ids = RequestIds(10)
    ids.check("r1", A)
    assert ids.check("r1", B) is Seen.REUSED
    assert ids.check("r1", B) is Seen.REUSED_REPEAT  # its second chunk: rejected already
    assert ids.check("r1", A) is Seen.REPEAT
    assert ids.check("r1", Origin("ads.requests", 5, 21)) is Seen.REUSED


def test_the_reason_names_the_id_and_both_requests() -> None:
    ids = RequestIds(10)
    ids.check("r1", A)
    assert ids.reason("r1", B) == ("request_id: 'r1' is already in use by the request at "
                                   "ads.requests[3]@17 (this request: ads.requests[5]@20); "
                                   "every request needs a new request id")


def test_without_an_origin_only_a_repeat_can_be_recognized() -> None:
    ids = RequestIds(10)
    assert ids.check("r1", None) is Seen.NEW
    assert ids.check("r1", B) is Seen.REPEAT
    ids.check("r2", A)
    assert ids.check("r2", None) is Seen.REPEAT


def test_the_window_forgets_the_least_recently_seen_id() -> None:
    ids = RequestIds(2)
    ids.check("r1", A)
    ids.check("r2", B)
    ids.check("r1", A)  # seen again: r2 is now the oldest
    ids.check("r3", Origin("ads.requests", 0, 1))
    assert len(ids) == 2 and "r2" not in ids and "r1" in ids
    assert ids.check("r2", A) is Seen.NEW  # outside the window an id counts as new


def test_remembered_ids_from_a_changelog_are_recognized_as_reused() -> None:
    ids = RequestIds(10)
    ids.remember("r1", A)
    assert ids.check("r1", B) is Seen.REUSED
    assert ids.check("r1", A) is Seen.REPEAT


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RequestIds(0)


@pytest.mark.parametrize("raw", [b"ads.requests[3]@17", "ads.requests[3]@17"])
def test_origin_round_trips_through_its_header(raw: bytes | str) -> None:
    assert Origin.parse(raw) == A
    assert Origin.parse(A.header()) == A


@pytest.mark.parametrize("raw", [None, b"", b"ads.requests@17", b"ads.requests[x]@17",
                                 b"ads.requests[3]@", b"[3]@17", b"ads.requests[3@17"])
def test_an_origin_header_not_in_the_form_is_none(raw: bytes | None) -> None:
    assert Origin.parse(raw) is None


def test_origin_of_a_record_and_from_carried_headers() -> None:
    rec = Record("ads.requests", 3, 17, b"u1", b"")
    headers = carry({ORIGIN: Origin.of(rec).header(), "other": b"x"}, "ads.ScoreChunk/1.1")
    assert Origin.from_headers(headers) == A
    assert "other" not in headers
