"""Replay: send tasks again from a topic's history, chosen by offset or time, with their provenance.

The log is the record: every task sent is still in its topic until retention removes it. A replayed
task is a new task (a fresh id, so a stored result does not make the worker skip it) with the original
key (so it lands in the same partition and keeps per-key order) and headers naming where it came from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from taskq.app import Taskq
from taskq.brokers.base import Headers, Record
from taskq.errors import BrokerError, ConfigError
from taskq.message import H_ATTEMPTS, H_ETA, H_FIRST_FAILURE, H_ID, H_ORIGIN, H_TASK
from taskq.task import new_task_id

H_REPLAY_OF = "replay-of"  # the original task id
H_REPLAY_TOPIC = "replay-topic"
H_REPLAY_PARTITION = "replay-partition"
H_REPLAY_OFFSET = "replay-offset"
PROVENANCE = (H_REPLAY_OF, H_REPLAY_TOPIC, H_REPLAY_PARTITION, H_REPLAY_OFFSET)


@dataclass(frozen=True)
class Window:
    """Where to read: per partition, from ``start`` up to (not including) ``end``."""

    topic: str
    start: dict[int, int]
    end: dict[int, int]

    @property
    def size(self) -> int:
        return sum(max(0, self.end[p] - s) for p, s in self.start.items() if p in self.end)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-25T18:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def window(app: Taskq, task: str, from_offset: int | None = None, from_time: datetime | None = None,
           to_time: datetime | None = None, partition: int | None = None) -> Window:
    """The offsets to replay of ``task``'s topic; it ends where the log ends now (a replay of a topic
    into itself never reads its own output)."""
    if (from_offset is None) == (from_time is None):
        raise ConfigError("give --from-offset N or --from-time ISO, one of them")
    if task in app.tasks:
        topic = app.get_task(task).topic
    elif task.startswith(app.settings.topic_prefix) and task in app.broker.list_topics():
        topic = task  # a topic named directly (a priority level, say)
    else:
        topic = app.topic_for(task)
    marks = app.broker.watermarks(topic)
    if not marks:
        raise ConfigError(f"topic {topic} does not exist; nothing to replay")
    if partition is not None:
        if partition not in marks:
            raise ConfigError(f"{topic} has partitions 0-{len(marks) - 1}, not {partition}")
        marks = {partition: marks[partition]}
    if from_time is not None:
        found = app.broker.offsets_for_time(topic, from_time.timestamp())
        start = {p: found[p] for p in marks}
    else:
        assert from_offset is not None
        start = {p: max(lo, from_offset) for p, (lo, _hi) in marks.items()}
    end = {p: hi for p, (_lo, hi) in marks.items()}
    if to_time is not None:
        upto = app.broker.offsets_for_time(topic, to_time.timestamp())
        end = {p: min(hi, upto[p]) for p, hi in end.items()}
    return Window(topic, start, end)


def read(app: Taskq, win: Window, timeout: float | None = None) -> Iterator[Record]:
    """Every record in the window, partition by partition in offset order (no consumer group)."""
    todo = {p: s for p, s in win.start.items() if s < win.end.get(p, 0)}
    if not todo:
        return
    limit = max(30.0, win.size / 1000) if timeout is None else timeout
    deadline = time.monotonic() + limit
    reader = app.broker.reader(win.topic, todo)
    try:
        while todo:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {win.topic} took longer than {limit:g} s; still to read from {todo}")
            for record in reader.read(500, 0.5):
                p = record.partition
                if p in todo and record.offset < win.end[p]:
                    yield record
                if record.offset + 1 >= win.end.get(p, 0):
                    todo.pop(p, None)
    finally:
        reader.close()


def records(app: Taskq, win: Window, key: str | None = None) -> Iterator[Record]:
    """The task messages in the window (of ``key`` only, when given)."""
    wanted = key.encode() if key is not None else None
    for record in read(app, win):
        if record.header(H_TASK) is None or (wanted is not None and record.key != wanted):
            continue
        yield record


def provenance(record: Record) -> Headers:
    """The record's headers for a new run: a new id, no retry state, where it came from."""
    drop = {H_ID, H_ATTEMPTS, H_FIRST_FAILURE, H_ETA, H_ORIGIN, *PROVENANCE}
    headers = [(k, v) for k, v in record.headers if k not in drop]
    return [(H_ID, new_task_id().encode()), *headers,
            (H_REPLAY_OF, record.header(H_ID) or b""), (H_REPLAY_TOPIC, record.topic.encode()),
            (H_REPLAY_PARTITION, str(record.partition).encode()), (H_REPLAY_OFFSET, str(record.offset).encode())]


def replay(app: Taskq, win: Window, key: str | None = None, dry_run: bool = False) -> list[tuple[Record, str]]:
    """Send the window's tasks again; returns (original record, new task id) for each."""
    sent: list[tuple[Record, str]] = []
    producer = None if dry_run else app.producer
    for record in records(app, win, key):
        headers = provenance(record)
        new_id = headers[0][1].decode()
        if producer is not None:
            producer.produce(win.topic, record.key, record.value, headers)
            producer.poll(0)
        sent.append((record, new_id))
    if producer is not None:
        app.flush()
    return sent
