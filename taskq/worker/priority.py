"""Priorities: which record the worker starts next when a task has several priority topics.

Kafka has no message priority, so ``apply_async(priority=p)`` sends to the task's topic for level
``p`` (level 0 is the task's own topic). The worker consumes every level; records taken wait here, one
queue per level, and at most ``slots`` of them are handed to the key dispatcher at a time. The next one
comes from the non-empty level with the lowest *pass* (stride scheduling): serving level ``p`` adds
``1 / weight(p)`` to its pass, with ``weight(p) = ratio ** p``, so under load each level gets a share of
starts proportional to its weight (ratio 3 and three levels: 1/13, 3/13, 9/13) and no level starves.
A level idle for a while does not bank credit: its pass is raised to the current one when it refills.
Fetching follows the same rule through pause/resume: a level whose queue holds ``limit`` records has
its partitions paused until the queue is down to three quarters of that (early: fetching again takes
a round trip, and the queue must not run dry meanwhile), so the worker keeps reading the levels it
lacks. The worker's overall prefetch bound is raised by one poll batch per level, so full low levels
never stop the fetching of a high level.

Thread: everything here runs on the consumer thread (``add``, ``pump``, ``finished``, ``drop``,
``pauses``); the hand-off out is ``dispatch(record)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from taskq.brokers.base import Record, TopicPartition

DEFAULT_RATIO = 3.0


class PriorityScheduler:
    """Weighted choice among per-level queues of taken records; pause/resume of full levels."""

    def __init__(self, levels: dict[str, int], dispatch: Callable[[Record], None], slots: int, limit: int,
                 ratio: float = DEFAULT_RATIO) -> None:
        self.levels = levels  # topic -> level
        self.weights = {level: ratio ** level for level in set(levels.values())}
        self.dispatch = dispatch
        self.slots = slots
        self.limit = max(1, limit)
        # resume early: fetching again takes a round trip, and the queue must not run dry meanwhile
        self.resume_at = self.limit * 3 // 4
        self._queues: dict[int, deque[Record]] = {level: deque() for level in self.weights}
        self._pass = dict.fromkeys(self.weights, 0.0)
        self._now = 0.0  # the pass of the level served last
        self._out: set[tuple[str, int, int]] = set()  # dispatched, not finished
        self._paused: set[int] = set()
        self.started = dict.fromkeys(self.weights, 0)  # records dispatched per level

    def add(self, record: Record) -> None:
        level = self.levels.get(record.topic, 0)
        queue = self._queues[level]
        if not queue:  # no credit for the time it had nothing waiting
            self._pass[level] = max(self._pass[level], self._now)
        queue.append(record)

    def pump(self) -> None:
        """Dispatch while there are free slots and waiting records."""
        queues, passes, out = self._queues, self._pass, self._out
        while len(out) < self.slots:
            waiting = [level for level, q in queues.items() if q]
            if not waiting:
                return
            level = min(waiting, key=lambda lv: (passes[lv], -lv))
            record = queues[level].popleft()
            self._now = passes[level]
            passes[level] += 1.0 / self.weights[level]
            out.add((record.topic, record.partition, record.offset))
            self.started[level] += 1
            self.dispatch(record)

    def finished(self, records: Iterable[Record]) -> None:
        """These records have an outcome, or will not run here: their slots are free."""
        for record in records:
            self._out.discard((record.topic, record.partition, record.offset))

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[Record]:
        """Take records not yet dispatched out of the queues (of ``partitions``, or all); returns them."""
        dropped: list[Record] = []
        for level, queue in self._queues.items():
            keep: deque[Record] = deque()
            for record in queue:
                if partitions is None or (record.topic, record.partition) in partitions:
                    dropped.append(record)
                else:
                    keep.append(record)
            self._queues[level] = keep
        return dropped

    def pauses(self, assignment: Iterable[TopicPartition]) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """(partitions to pause, partitions to resume) for the levels that filled up or drained."""
        full = {level for level, q in self._queues.items() if len(q) >= self.limit}
        drained = {level for level in self._paused if len(self._queues[level]) <= self.resume_at}
        pause_levels = full - self._paused
        resume_levels = drained - full
        self._paused = (self._paused | pause_levels) - resume_levels
        if not pause_levels and not resume_levels:
            return [], []
        owned = list(assignment)
        return ([tp for tp in owned if self.levels.get(tp[0], 0) in pause_levels],
                [tp for tp in owned if self.levels.get(tp[0], 0) in resume_levels])

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())
