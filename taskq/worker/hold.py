"""Retries held in the worker: strict per-key order across retries (``@app.task(strict_order=True)``).

A strict task's retry due within ``strict_order_max_hold`` seconds is not sent through a delay tier:
the finisher hands the record's next attempt here and does not report the record finished, so its key
stays held in the dispatcher (later records of that key wait) and its offset stays below the commit
point (a crash redelivers the original record: nothing is lost). Other keys and partitions flow on.
When due, the attempt is submitted to the pool like any record.

Hand-offs: ``hold(record, delay)`` from the finisher thread; ``submit(record)`` (the pool's) from
this module's timer thread; ``release(partitions)`` (revoke) and ``release()`` (stop) submit held
records at once, so that the pool reports them abandoned (not runnable) instead of making the
consumer thread wait out their delays.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable

from taskq.brokers.base import Record, TopicPartition


class RetryHolder:
    """Submits held records to the pool when their delay has passed."""

    def __init__(self, submit: Callable[[Record], None]) -> None:
        self._submit = submit
        self._heap: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="taskq-retry-hold", daemon=True)
        self._thread.start()

    def hold(self, record: Record, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), record))
            self._cond.notify()

    def release(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Submit now the held records of ``partitions`` (all when None); ends the thread when all."""
        wanted = None if partitions is None else set(partitions)
        with self._cond:
            now = [e for e in self._heap if wanted is None or (e[2].topic, e[2].partition) in wanted]
            self._heap = [e for e in self._heap if e not in now]
            heapq.heapify(self._heap)
            if partitions is None:
                self._stopped = True
            self._cond.notify()
        for _, _, record in sorted(now):
            self._submit(record)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                record = heapq.heappop(self._heap)[2]
            self._submit(record)
