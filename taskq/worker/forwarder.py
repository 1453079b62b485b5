"""The forwarder thread: moves due messages from the delay tiers back to their task topics.

It reads the tier topics in its own consumer group (``<group>.delay``) and holds their records;
each is sent back through the :class:`~taskq.worker.sender.Sender` when its own ``eta`` passes,
whatever sits before it in its tier partition (no delayed message waits on one due later). A tier
partition's commit point is its first record not sent yet: a record not due that holds it back
once later ones went out is re-queued (sent again to the tier for its remaining delay, which may be
a smaller tier) so the commit point moves on. A tier partition holding ``MAX_HELD`` records is not read
until they go; delays beyond the last tier are sent back to its end once per tier span meanwhile.
Offsets are committed once the sends are acknowledged.
Hand-offs: ``stopping`` (an event set by the worker) ends it; ``on_forwarded(records)`` reports each
batch sent; ``on_fatal(error)`` reports an outage that outlasted ``outage_timeout`` or another error the
thread cannot go on after (the thread ends, the worker stops).
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from taskq.app import Taskq
from taskq.brokers.base import Record, TopicPartition
from taskq.deadletter import dead_letter_forms
from taskq.errors import BrokerError, TaskqError
from taskq.message import H_ETA, H_ORIGIN
from taskq.topics import delay_group
from taskq.worker.sender import Outgoing, Sender, retrying, run_thread

log = logging.getLogger("taskq.worker")
MAX_HELD = 10_000  # records held per tier partition before it is paused


class Forwarder:
    """Moves due delayed messages back to their task topics, in partition order."""

    def __init__(self, app: Taskq, sender: Sender, stopping: threading.Event,
                 on_forwarded: Callable[[list[Record]], None],
                 on_fatal: Callable[[TaskqError], None] | None = None) -> None:
        self.app = app
        self.sender = sender
        self._stopping = stopping
        self._on_forwarded = on_forwarded
        self._on_fatal = on_fatal
        self._known_topics: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="taskq-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:  # started (a worker stopped before its first poll never starts it)
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        run_thread("forwarder", self._forward, self._on_fatal)  # unsent records stay uncommitted in their tiers

    def _forward(self) -> None:
        app = self.app
        tiers = _Tiers()
        # a fetch waits for new records up to 500 ms (librdkafka's default), not the task consumers' 10: an
        # idle tier asked the broker a hundred times a second, 6 % of a drain's throughput on a small machine;
        # new records end the wait at once, and due ones are found by the loop every 0.2 s all the same
        consumer = app.broker.consumer(delay_group(app.group), app.delay_topics, None, tiers.forget,
                                       **{"fetch.wait.max.ms": 500, **app.settings.consumer_options})
        spans = dict(zip(app.delay_topics, app.settings.retry_tiers))
        paused: set[TopicPartition] = set()
        try:
            while not self._stopping.is_set():
                records = consumer.consume(500, 0.2)
                now = time.time()
                for record in records:
                    tiers.add(record, now)
                due = tiers.due(now)
                if due:  # finding their topics asks the broker: an outage is waited out as for the sends
                    forms = retrying("find the topics of delayed tasks",
                                     lambda: [self._forms(r) for r in due],  # noqa: B023 - called here, at once
                                     app.settings.outage_timeout)
                    self.sender.send_first(forms)
                    self._on_forwarded(due)
                    tiers.sent(due)
                    self._requeue(tiers, tiers.blocking())
                # A tier partition holding MAX_HELD records is not read (memory). Those not due within the
                # tier's span and read a span ago (delays beyond the last tier) go back to its end, so that
                # a record due sooner behind them waits about a span at most, not until they are due.
                for tp in paused | {tp for tp in tiers.partitions() if tiers.held(tp) >= MAX_HELD}:
                    self._requeue(tiers, tiers.overstaying(tp, now, spans[tp[0]]))
                commits = tiers.commit_points()
                if commits:
                    try:
                        consumer.commit(commits)
                    except BrokerError as exc:  # e.g. the group moved on while this process was paused
                        log.warning("delay-tier commit failed (the next owner forwards those records "
                                    "again; a forwarded copy of a finished task is skipped): %s", exc)
                full = {tp for tp in tiers.partitions() if tiers.held(tp) >= MAX_HELD} - paused
                drained = {tp for tp in paused if tiers.held(tp) < MAX_HELD // 2}
                if full:
                    consumer.pause(full)
                if drained:
                    consumer.resume(drained)
                paused = (paused | full) - drained
        finally:
            consumer.close()

    def _requeue(self, tiers: _Tiers, records: list[Record]) -> None:
        """Send records that are not due yet but hold back their partition's commit point to the end of the
        tier for their remaining delay, so the commit point moves past them (nothing waits on them)."""
        if not records:
            return
        now = time.time()
        sent = self.sender.send_first([[(self.app.delay_topic(max(0.0, due_at(r) - now)), r.key, r.value,
                                         r.headers)] for r in records])
        moved = [r for r, index in zip(records, sent) if index is not None]
        tiers.sent(moved)
        log.debug("re-queued %d delayed record(s) not yet due", len(moved))

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


class _Tiers:
    """The tier records read and not yet committed: per partition in offset order, and by due time.

    A record is sent when due, wherever it sits in its partition; a partition's commit point is its
    first record not sent yet. Only the forwarder thread uses this.
    """

    def __init__(self) -> None:
        self._records: dict[TopicPartition, deque[Record]] = {}  # read, not yet committed, offset order
        self._read_at: dict[TopicPartition, deque[float]] = {}  # when each of those was read (time.time())
        self._pending: dict[TopicPartition, set[int]] = {}  # offsets of those not sent yet
        self._heap: list[tuple[float, int, Record]] = []  # (due, seq, record); stale entries skipped
        self._seq = 0

    def add(self, record: Record, now: float) -> None:
        tp = (record.topic, record.partition)
        self._records.setdefault(tp, deque()).append(record)
        self._read_at.setdefault(tp, deque()).append(now)
        self._pending.setdefault(tp, set()).add(record.offset)
        self._seq += 1
        heapq.heappush(self._heap, (due_at(record), self._seq, record))

    def forget(self, partitions: list[TopicPartition]) -> None:
        """The partitions were revoked: their records are another forwarder's now."""
        for tp in partitions:
            self._records.pop(tp, None)
            self._read_at.pop(tp, None)
            self._pending.pop(tp, None)

    def due(self, now: float) -> list[Record]:
        """Records due by ``now`` and not sent yet, earliest first."""
        out: list[Record] = []
        while self._heap and self._heap[0][0] <= now:
            record = heapq.heappop(self._heap)[2]
            if record.offset in self._pending.get((record.topic, record.partition), ()):
                out.append(record)
        return out

    def sent(self, records: list[Record]) -> None:
        for r in records:
            self._pending.get((r.topic, r.partition), set()).discard(r.offset)

    def blocking(self) -> list[Record]:
        """Records not sent yet that sit before a sent record of their partition (they hold its commit)."""
        out: list[Record] = []
        for tp, records in self._records.items():
            pending = self._pending[tp]
            last_sent = next((r.offset for r in reversed(records) if r.offset not in pending), None)
            if last_sent is not None:
                out.extend(r for r in records if r.offset < last_sent and r.offset in pending)
        return out

    def commit_points(self) -> dict[TopicPartition, int]:
        """Partitions whose first records were sent: the offset after them (and forget those records)."""
        points: dict[TopicPartition, int] = {}
        for tp, records in self._records.items():
            pending = self._pending[tp]
            read_at = self._read_at[tp]
            while records and records[0].offset not in pending:
                points[tp] = records.popleft().offset + 1
                read_at.popleft()
        return points

    def overstaying(self, tp: TopicPartition, now: float, span: float) -> list[Record]:
        """Records of ``tp`` not sent yet, not due within ``span`` seconds and read ``span`` ago or more."""
        pending = self._pending.get(tp, set())
        return [r for r, read in zip(self._records.get(tp, ()), self._read_at.get(tp, ()))
                if read + span <= now and r.offset in pending and due_at(r) > now + span]

    def partitions(self) -> list[TopicPartition]:
        return list(self._records)

    def held(self, tp: TopicPartition) -> int:
        return len(self._records.get(tp, ()))


def due_at(record: Record) -> float:
    """When a delayed record is due; at once when its eta header is missing, unreadable or not finite
    (a NaN at the top of the due-time heap would never be due, and nothing under it either)."""
    try:
        due = float(record.header(H_ETA) or 0)
    except ValueError:
        return 0.0
    return due if math.isfinite(due) else 0.0
