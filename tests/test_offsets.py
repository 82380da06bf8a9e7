from pipeline.offsets import OffsetTracker, PartitionOffsets
from pipeline.transport.base import TP

TP0 = TP("t", 0)


def test_commit_never_skips_unfinished_offset() -> None:
    p = PartitionOffsets()
    for off in range(10, 15):
        p.start(off)
    p.done(12)
    p.done(13)
    assert p.watermark() == 10
    p.done(10)
    assert p.watermark() == 11
    p.done(11)
    assert p.watermark() == 14
    p.done(14)
    assert p.watermark() == 15


def test_watermark_handles_gaps_left_by_transaction_markers() -> None:
    p = PartitionOffsets()
    for off in (3, 4, 7, 9):
        p.start(off)
    for off in (9, 7, 4):
        p.done(off)
    assert p.watermark() == 3
    p.done(3)
    assert p.watermark() == 10


def test_refetching_below_the_position_is_an_error() -> None:
    p = PartitionOffsets()
    p.start(5)
    try:
        p.start(4)
    except ValueError as e:
        assert "fetched again" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_tracker_reports_only_moved_watermarks_and_forgets_revoked() -> None:
    t = OffsetTracker()
    other = TP("t", 1)
    t.start(TP0, 0)
    t.start(other, 0)
    assert t.to_commit() == {TP0: 0, other: 0}
    t.mark_committed({TP0: 0, other: 0})
    assert t.to_commit() == {}
    t.done(TP0, 0)
    assert t.to_commit() == {TP0: 1}
    assert t.in_flight() == 1
    t.forget({other})
    t.done(other, 0)  # a late completion of a revoked partition is ignored
    assert t.in_flight() == 0
    assert t.to_commit({other}) == {}
