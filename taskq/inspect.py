"""What ``taskq events``, ``taskq inspect`` and ``taskq lag`` show, without the command line.

Workers are known from their events on the events topic: ``inspect`` reads the last ``window``
seconds of it (found by timestamp), so a worker appears once it has sent one heartbeat, is shown
offline at once after a clean stop, and lost once it missed three heartbeats (:func:`lost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.events import (
    HEARTBEAT_INTERVAL,
    STATES,
    TASK_STARTED,
    TASK_TYPES,
    WORKER_OFFLINE,
    WORKER_TYPES,
    decode_all,
)

if TYPE_CHECKING:
    from taskq.app import Taskq

WINDOW = 60.0  # seconds of events read by inspect
READ_TIMEOUT = 60.0  # bound on reading the window


# --------------------------------------------------------------------------- reading events


def read_events(app: Taskq, since: float, timeout: float = READ_TIMEOUT, sort: bool = True,
                ) -> list[dict[str, Any]]:
    """Events published from ``since`` (epoch s) up to now: oldest first, or (``sort=False``) in
    topic order within each partition."""
    broker, topic = app.broker, app.events_topic
    if topic not in broker.list_topics():
        return []
    start = broker.offsets_for_time(topic, since)
    end = {p: high for p, (_low, high) in broker.watermarks(topic).items()}
    todo = {p: o for p, o in start.items() if o < end.get(p, 0)}
    events: list[dict[str, Any]] = []
    if not todo:
        return events
    reader = broker.reader(topic, todo)
    deadline = time.monotonic() + timeout
    try:
        while todo and time.monotonic() < deadline:
            for record in reader.read(5000, 0.5):
                if record.partition not in todo or record.offset >= end[record.partition]:
                    continue
                events.extend(decode_all(record.value))
                if record.offset + 1 >= end[record.partition]:
                    del todo[record.partition]
    finally:
        reader.close()
    if sort:
        events.sort(key=lambda e: e.get("ts") or 0.0)
    return events


def follow(app: Taskq, since: float | None = None, poll: float = 0.5,
           ) -> Generator[dict[str, Any] | None, None, None]:
    """Events as they are published, from ``since`` (default: now) on; None when ``poll`` s pass quietly."""
    broker, topic = app.broker, app.events_topic
    app.ensure_topic(topic, app.settings.default_partitions)
    if since is None:
        start = {p: high for p, (_low, high) in broker.watermarks(topic).items()}
    else:
        start = broker.offsets_for_time(topic, since)
    reader = broker.reader(topic, start)
    try:
        while True:
            records = reader.read(1000, poll)
            if not records:
                yield None
            for record in records:
                yield from decode_all(record.value)
    finally:
        reader.close()


def matcher(task: str | None = None, state: str | None = None, key: str | None = None,
            ) -> Callable[[dict[str, Any]], bool]:
    """A filter on task name, state (``started``, ``task-started`` or ``STARTED``) and key."""
    wanted: set[str] = set()
    if state:
        s = state.lower()
        wanted = {t for t in TASK_TYPES + WORKER_TYPES
                  if s in (t, t.split("-", 1)[1]) or STATES.get(t, "").lower() == s}
        if not wanted:
            raise ValueError(f"unknown state {state!r}: use an event type such as task-started, or a state "
                             f"such as {', '.join(sorted(set(STATES.values())))}")

    def match(event: dict[str, Any]) -> bool:
        return ((task is None or event.get("task") == task) and (not wanted or event["type"] in wanted)
                and (key is None or event.get("key") == key))
    return match


# --------------------------------------------------------------------------- workers


@dataclass
class WorkerView:
    """A worker as its latest event shows it."""

    name: str
    status: str  # online | offline (stopped cleanly) | lost (silent: killed, hung or cut off)
    hostname: str | None
    pid: int | None
    pool: str | None
    concurrency: int | None
    active: int
    processed: int
    partitions: list[list[Any]]
    last_seen: float
    seconds_ago: float
    events: dict[str, int] = field(default_factory=dict)  # task events by type in the window

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lost(silent_for: float, freq: float | None) -> bool:
    """Whether a worker whose heartbeats come every ``freq`` seconds, silent for ``silent_for``, is lost:
    three heartbeats missed (at least 5 s). The monitor and ``taskq inspect`` say the same."""
    return silent_for > max(3 * (freq or HEARTBEAT_INTERVAL), 5.0)


def workers(events: list[dict[str, Any]], now: float | None = None) -> list[WorkerView]:
    """Every worker with an event in ``events``, by name; offline after a clean stop, lost after a silence."""
    now = time.time() if now is None else now
    latest: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for event in events:
        name = event.get("worker")
        if not name:
            continue
        if event["type"] in WORKER_TYPES:
            if name not in latest or event["ts"] >= latest[name]["ts"]:
                latest[name] = event
        else:
            by_type = counts.setdefault(name, {})
            by_type[event["type"]] = by_type.get(event["type"], 0) + 1
    views = []
    for name, e in sorted(latest.items()):
        ago = max(0.0, now - e["ts"])
        status = "offline" if e["type"] == WORKER_OFFLINE else "lost" if lost(ago, e.get("freq")) else "online"
        views.append(WorkerView(name, status, e.get("hostname"), e.get("pid"),
                                e.get("pool"), e.get("concurrency"), e.get("active", 0), e.get("processed", 0),
                                e.get("partitions", []), e["ts"], round(ago, 3), counts.get(name, {})))
    return views


def active(events: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Tasks started on a worker still online and not finished (as far as the window shows)."""
    online = {w.name for w in workers(events, now) if w.status == "online"}
    last: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] in TASK_TYPES and event.get("id"):
            last[event["id"]] = event
    return [e for e in last.values() if e["type"] == TASK_STARTED and e.get("worker") in online]


def stats(events: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Per worker its latest heartbeat and its task events by type in the window."""
    return {w.name: w.as_dict() for w in workers(events, now)}


# --------------------------------------------------------------------------- lag


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    end: int
    lag: int  # end - committed (end - low when never committed: what the group would read)


def lag(app: Taskq, group: str | None = None) -> dict[str, Any]:
    """Committed offset, end offset and lag of ``group`` (default the app's) on every partition it reads.

    The topics are those the group has committed on, plus (for the app's own group) the app's task
    topics. The numbers are what Kafka's ``kafka-consumer-groups --describe`` prints.
    """
    broker = app.broker
    group = group or app.group
    existing = broker.list_topics()
    topics = set(broker.group_topics(group))
    if group == app.group:
        topics |= {t.topic for t in app.tasks.values() if t.topic in existing}
    rows: list[PartitionLag] = []
    for topic in sorted(topics):
        committed = broker.committed(group, topic)
        for p, (low, high) in sorted(broker.watermarks(topic).items()):
            c = committed.get(p)
            rows.append(PartitionLag(topic, p, c, high, high - (c if c is not None else low)))
    by_topic: dict[str, int] = {}
    for row in rows:
        by_topic[row.topic] = by_topic.get(row.topic, 0) + row.lag
    return {"group": group, "partitions": [asdict(r) for r in rows], "topics": by_topic,
            "total": sum(by_topic.values())}
