"""Topic administration: what ``taskq topics`` shows, growing a task's topic, and the idle-member check."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from taskq.app import Taskq
from taskq.errors import ConfigError
from taskq.topics import is_dlq

log = logging.getLogger("taskq.topics")

PLACEMENT_NOTE = (
    "Keys are placed by murmur2(key) % partitions, so with {new} partitions most keys ({moved:.0%} on "
    "average) now map to a different partition than before. New messages of a key go to its new partition "
    "while older ones may still wait in the old one: per-key order holds again once the backlog sent "
    "before the change is done (drain the topic first, or stop producers, where strict order matters). "
    "Partitions can never be removed.")


@dataclass(frozen=True)
class TopicRow:
    """One line of ``taskq topics``."""

    topic: str
    kind: str  # task | dead letters | delay tier | other
    partitions: int
    replication: int
    retention_ms: int | None
    cleanup_policy: str
    messages: int  # high minus low watermark, summed
    lag: int | None  # of the app's group (task topics only)


def rows(app: Taskq) -> list[TopicRow]:
    """Every topic under the app's prefix and its delay tiers, task topics first."""
    broker = app.broker
    prefix = app.settings.topic_prefix
    delay = set(app.delay_topics)
    names = sorted(t for t in broker.list_topics() if t.startswith(prefix) or t in delay)
    info = broker.describe_topics(names)
    task_topics = {t.topic for t in app.tasks.values()}
    result = []
    for name in names:
        if name not in info:
            continue
        i = info[name]
        kind = ("task" if name in task_topics else "dead letters" if is_dlq(name)
                else "delay tier" if name in delay else "other")
        marks = broker.watermarks(name)
        lag = sum(broker.lag(app.group, name, marks).values()) if kind == "task" else None
        result.append(TopicRow(name, kind, i.partitions, i.replication, i.retention_ms, i.cleanup_policy,
                               sum(hi - lo for lo, hi in marks.values()), lag))
    order = {"task": 0, "dead letters": 1, "delay tier": 2, "other": 3}
    return sorted(result, key=lambda r: (order[r.kind], r.topic))


def grow(app: Taskq, task: str, partitions: int) -> str:
    """Grow ``task``'s topic, its priority levels and their dead-letter topics to ``partitions``; what that
    means for keys."""
    topic = app.get_task(task).topic if task in app.tasks else app.topic_for(task)
    current = app.broker.list_topics().get(topic)
    if current is None:
        raise ConfigError(f"topic {topic} does not exist yet; it is created with the task's partitions= on first use")
    if partitions <= current:
        raise ConfigError(f"{topic} has {current} partitions; Kafka can only add partitions (give more than {current})")
    levels = app.get_task(task).topics if task in app.tasks else [topic]  # every priority level
    existing = app.broker.list_topics()
    for name in [t for level in levels for t in (level, app.dlq_topic(level))]:
        if name in existing and existing[name] < partitions:
            app.broker.create_partitions(name, partitions)
    return f"{topic}: {current} -> {partitions} partitions. " + PLACEMENT_NOTE.format(
        new=partitions, moved=1 - _kept(current, partitions))


def _kept(old: int, new: int) -> float:
    """Share of keys whose partition stays when ``old`` partitions become ``new`` (uniform hashes)."""
    from math import lcm

    period = lcm(old, new)
    return sum(h % old == h % new for h in range(period)) / period


def check_members(app: Taskq, topics: list[str]) -> str | None:
    """A warning when the group has more members than a topic has partitions (the extra ones idle on it)."""
    counts = app.broker.list_topics()
    members = app.broker.group_members(app.group)
    short = sorted(t for t in topics if 0 < counts.get(t, 0) < members)
    if not short:
        return None
    fewest = min(counts[t] for t in short)
    return (f"consumer group {app.group} has {members} members but {', '.join(short)} "
            f"{'has' if len(short) == 1 else 'have'} fewer partitions (as few as {fewest}): "
            f"{members - fewest} member(s) sit idle there; grow with `taskq topics alter <task> "
            f"--partitions {members}` or run fewer workers")
