"""Offset bookkeeping for the consumer thread: which offsets of each partition may be committed.

Owned by the consumer thread only (no locks): records are taken in offset order as they are
consumed, finished in any order as the finisher reports them, and the commit point of a partition is
its first offset not yet finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from taskq.brokers.base import TopicPartition


class OffsetTracker:
    """Per partition, the offsets taken in order; the commit point is the first unfinished one."""

    def __init__(self) -> None:
        self._taken: dict[TopicPartition, deque[int]] = {}
        self._finished: dict[TopicPartition, set[int]] = {}
        self._commit_point: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._abandoned: dict[TopicPartition, int] = {}  # taken, will not run here: never finished

    def take(self, tp: TopicPartition, offset: int) -> None:
        taken = self._taken.get(tp)
        if taken is None:  # a new partition: no deque and set built per record
            taken = self._taken[tp] = deque()
            self._finished.setdefault(tp, set())
        taken.append(offset)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        finished = self._finished.get(tp)
        if finished is None:  # the partition was revoked meanwhile
            return
        finished.add(offset)
        taken = self._taken[tp]
        while taken and taken[0] in finished:
            done = taken.popleft()
            finished.discard(done)
            self._commit_point[tp] = done + 1

    def skip_to(self, tp: TopicPartition, offset: int) -> None:
        """The consumer's position is ``offset``: when nothing taken from ``tp`` is unfinished, the offsets
        before it hold no record to run (transaction markers) and the commit point moves there."""
        if not self._taken.get(tp) and offset > self._commit_point.get(tp, -1):
            self._commit_point[tp] = offset

    def to_commit(self, partitions: Iterable[TopicPartition] | None = None, every: bool = False,
                  ) -> dict[TopicPartition, int]:
        """Commit points that moved since the last call (``every``: all of them), for ``partitions`` or all.

        ``every`` is for the synchronous commits at revoke and stop, which must land even if an earlier
        asynchronous commit of the same point was lost.
        """
        tps = self._commit_point.keys() if partitions is None else [p for p in partitions if p in self._commit_point]
        moved = {tp: self._commit_point[tp] for tp in tps
                 if every or self._committed.get(tp) != self._commit_point[tp]}
        self._committed.update(moved)
        return moved

    def commit_failed(self, tp: TopicPartition) -> None:
        """The last commit of ``tp`` did not land: the next :meth:`to_commit` returns its point again."""
        self._committed.pop(tp, None)

    def abandon(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` will not run here (stopping or revoked): it stays uncommitted, but is not waited for."""
        if tp in self._taken:
            self._abandoned[tp] = self._abandoned.get(tp, 0) + 1

    def unfinished(self, partitions: Iterable[TopicPartition]) -> int:
        """Records of these partitions taken and neither finished nor abandoned."""
        return sum(len(self._taken.get(tp, ())) - len(self._finished.get(tp, ())) - self._abandoned.get(tp, 0)
                   for tp in partitions)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            for table in (self._taken, self._finished, self._commit_point, self._committed, self._abandoned):
                table.pop(tp, None)
