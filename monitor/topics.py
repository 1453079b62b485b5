"""Topics, partitions, leaders, offsets and consumer lag, read through the broker's admin calls.

``LagSampler`` polls them every few seconds in its own thread and keeps the latest snapshot plus a
bounded history of total lag per group for the overview chart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from taskq.app import Taskq
from taskq.errors import TaskqError
from taskq.topics import delay_group, is_dlq, is_tier_topic, tier_prefix

log = logging.getLogger("taskq.monitor")


@dataclass(slots=True)
class PartitionInfo:
    topic: str
    partition: int
    leader: str
    low: int
    high: int
    committed: int | None = None  # of the group that consumes the topic
    lag: int | None = None


@dataclass(slots=True)
class TopicInfo:
    name: str
    kind: str  # task | dead-letter | delay | events | revocations | other
    group: str | None
    partitions: list[PartitionInfo] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def messages(self) -> int:
        return sum(p.high - p.low for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "group": self.group, "lag": self.lag,
                "messages": self.messages,
                "partitions": [{"partition": p.partition, "leader": p.leader, "low": p.low, "high": p.high,
                                "committed": p.committed, "lag": p.lag} for p in self.partitions]}


def _leaders(app: Taskq) -> dict[tuple[str, int], str]:
    admin = getattr(app.broker, "admin", None)
    if admin is None:
        return {}
    meta = admin.list_topics(timeout=app.settings.connect_timeout)
    return {(t, p): str(part.leader) for t, tm in meta.topics.items() for p, part in tm.partitions.items()}


def classify(app: Taskq, topic: str) -> tuple[str, str | None]:
    """(kind, consuming group) of one of the app's topics: the forwarders' group reads the delay tiers, and every
    worker reads the revocations outside any group (no lag)."""
    from taskq.monitor.consumer import events_topic
    from taskq.revocations import revoked_topic

    prefix = app.settings.topic_prefix
    if topic == events_topic(app):
        return "events", None
    if topic == revoked_topic(app):
        return "revocations", None
    if is_dlq(topic):
        return "dead-letter", None
    if is_tier_topic(app.group, topic):
        return "delay", delay_group(app.group)
    if topic.startswith(prefix):
        return "task", app.group
    return "other", None


def read_topics(app: Taskq) -> list[TopicInfo]:
    """Every topic of the app (task, dead-letter, delay, events) with offsets and its group's lag."""
    prefix = app.settings.topic_prefix
    names = sorted(t for t in app.broker.list_topics() if t.startswith((prefix, tier_prefix(app.group))))
    leaders = _leaders(app)
    out = []
    for name in names:
        kind, group = classify(app, name)
        info = TopicInfo(name, kind, group)
        marks = app.broker.watermarks(name)
        committed = app.broker.committed(group, name) if group else {}
        for p, (lo, hi) in sorted(marks.items()):
            c = committed.get(p) if group else None
            lag = (hi - (c if c is not None else lo)) if group else None
            info.partitions.append(PartitionInfo(name, p, leaders.get((name, p), "local"), lo, hi, c, lag))
        out.append(info)
    return out


BUSY_FACTOR = 4  # the sampler waits at least this many times as long as its last read took


class LagSampler:
    """A thread reading topics and lag every ``interval`` s; ``history`` holds (ts, total task lag)."""

    def __init__(self, app: Taskq, interval: float = 2.0, keep: int = 1800) -> None:
        self.app = app
        self.interval = interval
        self.topics: list[TopicInfo] = []
        self.sampled_at = 0.0
        self.error: str | None = None
        self.history: deque[tuple[float, int]] = deque(maxlen=keep)
        self.listeners: list[Any] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="taskq-monitor-lag", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def sample(self) -> list[TopicInfo]:
        """Read now (also used by the REST API for a fresh answer)."""
        try:
            topics = read_topics(self.app)
        except TaskqError as exc:
            self.error = str(exc)
            log.warning("lag sampler: %s", exc)
            return self.topics
        now = time.time()
        with self._lock:
            self.topics, self.sampled_at, self.error = topics, now, None
            self.history.append((now, sum(t.lag for t in topics if t.kind == "task")))
        for listener in self.listeners:
            listener(topics)
        return topics

    def group_lag(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.topics:
            if t.group and t.kind == "task":
                out[t.group] = out.get(t.group, 0) + t.lag
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            # a cluster of hundreds of topics takes seconds to read: sample less often rather than all the time
            self._stop.wait(max(self.interval, BUSY_FACTOR * (time.monotonic() - started)))


def waiting(app: Taskq, topic: str, partition: int, limit: int = 100, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The first ``limit`` records of ``topic[partition]`` at or past its group's committed offset: the tasks
    waiting there (id, task, key, offset, enqueued time), read from the broker outside any group."""
    from taskq.brokers.base import Record
    from taskq.errors import BrokerError
    from taskq.message import H_ID, H_TASK

    _kind, group = classify(app, topic)
    marks = app.broker.watermarks(topic)
    if partition not in marks:
        return []
    low, high = marks[partition]
    start = app.broker.committed(group, topic).get(partition, low) if group else low
    start = max(start, low)
    if start >= high:
        return []
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        reader = app.broker.reader(topic, {partition: start})
    except BrokerError:  # the embedded broker reads through a throwaway group instead
        reader = None
    if reader is not None:
        try:
            while len(records) < limit and time.monotonic() < deadline and (not records or records[-1].offset + 1 < high):
                records.extend(r for r in reader.read(limit - len(records), 0.5) if r.partition == partition)
        finally:
            reader.close()
    else:
        import uuid

        consumer = app.broker.consumer(f"taskq-monitor-peek-{uuid.uuid4().hex[:12]}", [topic])
        try:
            last = -1
            while len(records) < limit and time.monotonic() < deadline and last + 1 < high:
                for r in consumer.consume(1000, 0.5):
                    if r.partition == partition:
                        last = max(last, r.offset)
                        if r.offset >= start and len(records) < limit:
                            records.append(r)
        finally:
            consumer.close()

    def text(r: Record, name: str) -> str | None:
        raw = r.header(name)
        return raw.decode(errors="replace") if raw is not None else None

    return [{"offset": r.offset, "id": text(r, H_ID), "task": text(r, H_TASK),
             "key": r.key.decode(errors="replace") if r.key is not None else None,
             "enqueued": r.timestamp_ms / 1000 if r.timestamp_ms else None} for r in records[:limit]]
