"""The tumbling-window pattern: count requests per user over the inference topic, block the heavy ones.

:class:`ViolationCounter` consumes a task topic in its own consumer group, counts first attempts per
message key (the user) in tumbling windows of ``window`` seconds (by record timestamp), and when a window
closes (``grace`` seconds after its end, on the wall clock) publishes each key over ``threshold`` to the
violations topic (``<topic_prefix>rate-limit-violations``, JSON keyed by user). Offsets are committed only
behind closed windows, so a restart recounts an open window instead of losing it.

:class:`ViolationBlocker` consumes the violations topic and blocks each user for ``block_for`` seconds
(``.delay()`` then raises :class:`~taskq.errors.RateLimited`), leaving a notice. ``taskq llm-guard`` runs both.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq.brokers.base import Consumer, Record, TopicPartition
from taskq.message import H_ATTEMPTS

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.llm.guard import Guard
    from taskq.task import Task

log = logging.getLogger("taskq.llm.violations")
VIOLATIONS = "rate-limit-violations"


def violations_topic(app: Taskq) -> str:
    return app.settings.topic_prefix + VIOLATIONS


class ViolationCounter:
    """Requests per key in tumbling windows over ``task``'s topic; keys over ``threshold`` are published."""

    def __init__(self, app: Taskq, task: Task, window: float = 60.0, threshold: int = 100, grace: float = 2.0,
                 group: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.task = task
        self.window = window
        self.threshold = threshold
        self.grace = grace
        self.group = group or f"{app.group}.violations"
        self.topic = violations_topic(app)
        self.clock = clock
        self.counts: dict[float, Counter[str]] = {}  # window start -> key -> first attempts
        self.first_offsets: dict[float, dict[TopicPartition, int]] = {}  # window start -> first offset per tp
        self.next_offsets: dict[TopicPartition, int] = {}
        self.published = 0

    def window_of(self, record: Record) -> float:
        ts = record.timestamp_ms / 1000 if record.timestamp_ms > 0 else self.clock()
        return math.floor(ts / self.window) * self.window

    def add(self, records: list[Record]) -> None:
        for r in records:
            tp = (r.topic, r.partition)
            self.next_offsets[tp] = r.offset + 1
            attempts = r.header(H_ATTEMPTS)
            if attempts not in (None, b"0") or r.key is None:
                continue  # a retry is not a new request
            start = self.window_of(r)
            self.counts.setdefault(start, Counter())[r.key.decode(errors="replace")] += 1
            self.first_offsets.setdefault(start, {}).setdefault(tp, r.offset)

    def close_windows(self, produce: Callable[[str, dict[str, Any]], None]) -> int:
        """Publish the offenders of every window that has closed; returns how many windows closed."""
        now = self.clock()
        closed = [w for w in self.counts if w + self.window + self.grace <= now]
        for start in sorted(closed):
            for user, n in sorted(self.counts.pop(start).items()):
                if n > self.threshold:
                    produce(user, {"user": user, "task": self.task.name, "window_start": start,
                                   "window_end": start + self.window, "requests": n, "threshold": self.threshold})
                    self.published += 1
            self.first_offsets.pop(start, None)
        return len(closed)

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Next offsets behind every open window (records of open windows are read again after a restart)."""
        offsets = dict(self.next_offsets)
        for firsts in self.first_offsets.values():
            for tp, first in firsts.items():
                offsets[tp] = min(offsets.get(tp, first), first)
        return offsets

    def run(self, stop: threading.Event) -> None:
        app = self.app
        app.ensure_topics({self.topic: app.settings.default_partitions, self.task.topic: self.task.partitions})
        consumer = app.broker.consumer(self.group, [self.task.topic])
        producer = app.broker.producer()

        def produce(user: str, body: dict[str, Any]) -> None:
            producer.produce(self.topic, user.encode(), json.dumps(body).encode())
            log.warning("rate-limit violation: %s", body)

        try:
            while not stop.is_set():
                self.add(consumer.consume(1000, 0.2))
                if self.close_windows(produce):
                    if producer.flush(30):
                        raise RuntimeError("violations were not acknowledged by the broker")
                    _commit(consumer, self.commit_offsets())
        finally:
            consumer.close()
            producer.flush(10)


class ViolationBlocker:
    """Blocks each user published to the violations topic for ``block_for`` seconds, with a notice."""

    def __init__(self, app: Taskq, guard: Guard, block_for: float = 300.0, group: str | None = None) -> None:
        self.app = app
        self.guard = guard
        self.block_for = block_for
        self.group = group or f"{app.group}.violations-blocker"
        self.topic = violations_topic(app)
        self.blocked = 0

    def handle(self, record: Record) -> None:
        try:
            body = json.loads(record.value or b"{}")
            user = str(body["user"])
        except (ValueError, KeyError, TypeError):
            log.error("ignoring a malformed violation at %s[%d]@%d", record.topic, record.partition, record.offset)
            return
        now = time.time()
        notice = {**body, "blocked_at": now, "blocked_until": now + self.block_for,
                  "notice": f"user {user} made {body.get('requests')} requests in {body.get('window_end', 0) - body.get('window_start', 0):g} s "
                            f"(limit {body.get('threshold')}); blocked for {self.block_for:g} s"}
        self.guard.blocks.block(user, self.block_for, notice)
        log.warning(notice["notice"])
        self.blocked += 1

    def run(self, stop: threading.Event) -> None:
        app = self.app
        app.ensure_topics({self.topic: app.settings.default_partitions})
        consumer = app.broker.consumer(self.group, [self.topic])
        try:
            while not stop.is_set():
                records = consumer.consume(500, 0.2)
                for r in records:
                    self.handle(r)
                if records:
                    _commit(consumer, {(r.topic, r.partition): r.offset + 1 for r in records})
        finally:
            consumer.close()


def _commit(consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
    if offsets:
        consumer.commit(offsets)
