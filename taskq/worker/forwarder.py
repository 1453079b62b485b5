"""The forwarder thread: moves due messages from the delay tiers back to their task topics.

It reads the tier topics in its own consumer group (``<group>.delay``), holds each partition's
records in order until the head is due (``eta`` header), sends the due ones through the
:class:`~taskq.worker.sender.Sender` and commits them once acknowledged.
Hand-offs: ``stopping`` (an event set by the worker) ends it; ``on_forwarded(count)`` reports each
batch sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from taskq.app import Taskq
from taskq.brokers.base import Record, TopicPartition
from taskq.deadletter import dead_letter_forms
from taskq.message import H_ETA, H_ORIGIN
from taskq.topics import delay_group
from taskq.worker.sender import Outgoing, Sender

log = logging.getLogger("taskq.worker")
MAX_HELD = 10_000  # records held per tier partition before it is paused


class Forwarder:
    """Moves due delayed messages back to their task topics, in partition order."""

    def __init__(self, app: Taskq, sender: Sender, stopping: threading.Event,
                 on_forwarded: Callable[[int], None]) -> None:
        self.app = app
        self.sender = sender
        self._stopping = stopping
        self._on_forwarded = on_forwarded
        self._known_topics: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="taskq-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        held: dict[TopicPartition, deque[Record]] = {}
        paused: set[TopicPartition] = set()

        def revoke(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                held.pop(tp, None)
                paused.discard(tp)

        app = self.app
        consumer = app.broker.consumer(delay_group(app.group), app.delay_topics, None, revoke,
                                       **app.settings.consumer_options)
        try:
            while not self._stopping.is_set():
                for record in consumer.consume(500, 0.2):
                    held.setdefault((record.topic, record.partition), deque()).append(record)
                due: list[Record] = []
                now = time.time()
                for records in held.values():
                    while records and due_at(records[0]) <= now:
                        due.append(records.popleft())
                if due:
                    self.sender.send_first([self._forms(r) for r in due])
                    self._on_forwarded(len(due))
                    consumer.commit({(r.topic, r.partition): r.offset + 1 for r in due})
                # bound memory: stop reading a tier partition whose head is far from due
                full = {tp for tp, records in held.items() if len(records) >= MAX_HELD} - paused
                drained = {tp for tp in paused if not held.get(tp)}
                if full:
                    consumer.pause(full)
                if drained:
                    consumer.resume(drained)
                paused = (paused | full) - drained
        finally:
            consumer.close()

    def _forms(self, record: Record) -> list[Outgoing]:
        """The record back on its task topic; should that be refused as too large, a dead letter."""
        target = self._target(record)
        forward = (target, record.key, record.value, [h for h in record.headers if h[0] != H_ORIGIN])
        dlq = target if target == self.app.dlq_topic(record.topic) else self.app.dlq_topic(target)
        self.app.ensure_topic(dlq, 1)  # the app remembers the topics it ensured: one admin call per topic
        letters = dead_letter_forms(record, "dead", "taskq.errors.MessageTooLarge",
                                    f"too large to forward from {record.topic} to {target}", "", "forwarder")
        return [forward] + [(dlq, key, value, headers) for key, value, headers in letters]

    def _target(self, record: Record) -> str:
        """The task topic a delayed record returns to; a dead-letter topic when it names none."""
        origin = (record.header(H_ORIGIN) or b"").decode(errors="replace")
        if origin in self._known_topics or origin in self._refresh_known_topics():
            return origin
        target = self.app.dlq_topic(record.topic)
        self.app.ensure_topic(target, 1)
        log.error("delayed record %s[%d]@%d names no task topic (%r): dead-lettered to %s",
                  record.topic, record.partition, record.offset, origin, target)
        return target

    def _refresh_known_topics(self) -> set[str]:
        self._known_topics = set(self.app.broker.list_topics())
        return self._known_topics


def due_at(record: Record) -> float:
    """When a delayed record is due; at once when its eta header is missing or unreadable."""
    try:
        return float(record.header(H_ETA) or 0)
    except ValueError:
        return 0.0
