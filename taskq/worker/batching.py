"""Batch dispatch: records of batch tasks are grouped into lists, one call of the task per list.

Hand-offs (the same threads as :class:`~taskq.worker.dispatch.KeyedDispatcher`):
- ``add(record)`` from the consumer thread: the record joins its topic's open batch; a full batch is
  handed to ``submit_batch`` (the pool's) at once;
- ``due()`` from the consumer thread, every loop: open batches older than their ``batch_wait`` go;
- ``release(record)`` from the finisher once the record's outcome is durable.

Key order: a key's records join a batch in offset order, several of them in one batch if they come
together; a record whose key has records in a batch still running waits (in order) until that batch
is finished, so one key's records never run in two batches at once. A lock guards the state, since
``add``/``due`` and ``release`` run on different threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from taskq.brokers.base import Record, TopicPartition

KeyId = tuple[str, int, bytes | None]


def _key(record: Record) -> KeyId:
    return (record.topic, record.partition, record.key)


@dataclass
class _Topic:
    size: int
    wait: float
    open: list[Record] = field(default_factory=list)
    opened: float = 0.0  # time.monotonic() of the open batch's first record
    waiting: deque[Record] = field(default_factory=deque)


class Batcher:
    """Groups records of batch-task topics into batches of up to ``size`` records."""

    def __init__(self, submit_batch: Callable[[list[Record]], None], topics: dict[str, tuple[int, float]]) -> None:
        """``topics``: topic -> (batch size, seconds to wait for a batch to fill)."""
        self._submit_batch = submit_batch
        self._topics = {t: _Topic(size, wait) for t, (size, wait) in topics.items()}
        self.active = bool(self._topics)  # False: no batch task here, no record is ever handled
        self._running: dict[KeyId, int] = {}  # records of the key in submitted, unfinished batches
        self._waiting: dict[KeyId, int] = {}  # records of the key waiting for those
        self._lock = threading.Lock()

    def handles(self, record: Record) -> bool:
        return record.topic in self._topics

    def add(self, record: Record) -> None:
        with self._lock:
            full = self._place(record)
        if full:
            self._submit_batch(full)

    def due(self, now: float | None = None) -> None:
        """Submit every open batch that has waited its ``batch_wait``."""
        now = time.monotonic() if now is None else now
        ready: list[list[Record]] = []
        with self._lock:
            for state in self._topics.values():
                if state.open and now - state.opened >= state.wait:
                    ready.append(self._take(state))
        for batch in ready:
            self._submit_batch(batch)

    def release(self, record: Record) -> None:
        """``record``'s outcome is durable; when its key has nothing left running, its waiting records go."""
        key = _key(record)
        full: list[list[Record]] = []
        with self._lock:
            left = self._running.get(key, 0) - 1
            if left > 0:
                self._running[key] = left
                return
            self._running.pop(key, None)
            state = self._topics.get(record.topic)
            if state is None or not self._waiting.get(key):
                return
            queued, state.waiting = state.waiting, deque()
            for waiting in queued:
                wkey = _key(waiting)
                if self._running.get(wkey):
                    state.waiting.append(waiting)
                    continue
                self._waiting[wkey] -= 1
                if not self._waiting[wkey]:
                    del self._waiting[wkey]
                batch = self._join(state, waiting)
                if batch:
                    full.append(batch)
        for batch in full:
            self._submit_batch(batch)

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[Record]:
        """Forget records not yet submitted (of ``partitions``, or all); returns them."""
        dropped: list[Record] = []
        with self._lock:
            for state in self._topics.values():
                keep_open = [r for r in state.open if not _in(r, partitions)]
                dropped += [r for r in state.open if _in(r, partitions)]
                state.open = keep_open
                kept: deque[Record] = deque()
                for r in state.waiting:
                    if _in(r, partitions):
                        dropped.append(r)
                        key = _key(r)
                        self._waiting[key] -= 1
                        if not self._waiting[key]:
                            del self._waiting[key]
                    else:
                        kept.append(r)
                state.waiting = kept
        return dropped

    # -- under the lock -----------------------------------------------------------------------------

    def _place(self, record: Record) -> list[Record] | None:
        state = self._topics[record.topic]
        key = _key(record)
        if self._running.get(key) or self._waiting.get(key):
            state.waiting.append(record)
            self._waiting[key] = self._waiting.get(key, 0) + 1
            return None
        return self._join(state, record)

    def _join(self, state: _Topic, record: Record) -> list[Record] | None:
        if not state.open:
            state.opened = time.monotonic()
        state.open.append(record)
        return self._take(state) if len(state.open) >= state.size else None

    def _take(self, state: _Topic) -> list[Record]:
        batch, state.open = state.open, []
        for r in batch:
            key = _key(r)
            self._running[key] = self._running.get(key, 0) + 1
        return batch


def _in(record: Record, partitions: set[TopicPartition] | None) -> bool:
    return partitions is None or (record.topic, record.partition) in partitions
