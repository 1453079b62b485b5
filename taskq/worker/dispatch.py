"""Key dispatch: the consumer thread hands records here, and here they go to the pool.

Hand-offs: ``dispatch(record)`` from the consumer thread; ``submit(record)`` (the pool's) is called
for a record whose key has nothing running; ``release(record)`` from the finisher once a record's
outcome is durable starts the next record of that key. A lock guards the waiting lists, since
dispatch and release run on different threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from taskq.brokers.base import Record, TopicPartition


class KeyedDispatcher:
    """Sends records to the pool so that records with one key run one at a time, in offset order."""

    def __init__(self, submit: Callable[[Record], None]) -> None:
        self._submit = submit
        self._waiting: dict[tuple[str, int, bytes | None], deque[Record]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Keys with a record running or waiting (a key with nothing in flight is forgotten)."""
        return len(self._waiting)

    def dispatch(self, record: Record) -> None:
        key = (record.topic, record.partition, record.key)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.append(record)
                return
            self._waiting[key] = deque()
        self._submit(record)

    def release(self, record: Record) -> None:
        """``record`` finished: start the next record of its key, if any."""
        key = (record.topic, record.partition, record.key)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                return
            if not waiting:
                del self._waiting[key]
                return
            following = waiting.popleft()
        self._submit(following)

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[Record]:
        """Forget records not yet started (of ``partitions``, or all); returns them."""
        dropped: list[Record] = []
        with self._lock:
            for key, waiting in self._waiting.items():
                if partitions is None or (key[0], key[1]) in partitions:
                    dropped.extend(waiting)
                    waiting.clear()
        return dropped
