"""Unit tests (no Kafka, no Redis): OffsetTracker: commit points."""

from __future__ import annotations



from taskq.worker import OffsetTracker


def test_offset_tracker_commits_only_contiguous_finished() -> None:
    tp = ("topic", 0)
    other = ("topic", 1)
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.take(tp, offset)
    tracker.take(other, 0)
    assert tracker.to_commit() == {}
    tracker.finish(tp, 12)
    tracker.finish(tp, 11)
    assert tracker.to_commit() == {}  # 10 still running: nothing may be committed
    assert tracker.unfinished([tp]) == 2
    tracker.finish(tp, 10)
    assert tracker.to_commit() == {tp: 13}
    assert tracker.to_commit() == {}  # only points that moved
    tracker.finish(other, 0)
    assert tracker.to_commit([tp]) == {}
    assert tracker.to_commit([other]) == {other: 1}
    tracker.finish(tp, 13)
    assert tracker.unfinished([tp, other]) == 0
    assert tracker.to_commit() == {tp: 14}


def test_offset_tracker_forget_and_finish_after_revoke() -> None:
    tp = ("t", 0)
    tracker = OffsetTracker()
    tracker.take(tp, 0)
    tracker.take(tp, 1)
    tracker.forget([tp])
    tracker.finish(tp, 0)  # finished after the partition was revoked: ignored
    assert tracker.to_commit() == {}
    assert tracker.unfinished([tp]) == 0
    tracker.take(tp, 5)  # re-assigned later, starting elsewhere
    tracker.finish(tp, 5)
    assert tracker.to_commit() == {tp: 6}


def test_offset_tracker_abandoned_blocks_commit_but_is_not_waited_for() -> None:
    tp = ("t", 0)
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.take(tp, offset)
    tracker.finish(tp, 0)
    tracker.abandon(tp, 1)  # not run (stopping / revoked)
    tracker.finish(tp, 3)
    assert tracker.unfinished([tp]) == 1  # only offset 2 is still running
    tracker.finish(tp, 2)
    assert tracker.unfinished([tp]) == 0
    assert tracker.to_commit() == {tp: 1}  # never past the abandoned offset
    tracker.forget([tp])
    tracker.abandon(tp, 7)  # after a revoke: ignored
    tracker.take(tp, 1)
    assert tracker.unfinished([tp]) == 1


def test_offset_tracker_skips_to_the_position_only_when_nothing_is_unfinished() -> None:
    """A transactional producer's marker follows its last record: the consumer's position is past it, and
    the commit point follows once every record taken is finished, never past an unfinished one."""
    tp = ("t", 0)
    tracker = OffsetTracker()
    tracker.take(tp, 0)
    tracker.take(tp, 1)
    tracker.finish(tp, 1)
    tracker.skip_to(tp, 3)  # offset 2 is a marker; 0 still runs
    assert tracker.to_commit() == {}
    tracker.finish(tp, 0)
    assert tracker.to_commit() == {tp: 2}
    tracker.skip_to(tp, 3)
    assert tracker.to_commit() == {tp: 3}
    tracker.skip_to(tp, 2)  # never backwards
    assert tracker.to_commit() == {}
