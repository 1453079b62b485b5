"""Topic names: Kafka's rules for them and the names taskq gives its topics.

- task topics: ``<topic_prefix><task name>`` (``taskq.<task name>`` by default), and for priority
  level ``p`` > 0 of a task with ``priorities=N``: ``<task topic>.p<p>``;
- dead letters: ``<task topic>.dlq``, created with one partition (dead letters are rare, and a replay
  sends each to its task topic by its own key, so their placement does not matter; Kafka Connect's
  dead-letter topics are single-partition too). Every partition costs the broker at creation
  (about 15 ms each on a busy 2-core machine), so a worker starting on 200 new task types creates 200
  partitions of dead letters instead of 1,200;
- delay tiers: ``<group>.delay.<seconds>s``, one set per consumer group, read by the group
  ``<group>.delay``;
- events: ``<topic_prefix>events`` unless the ``events_topic`` setting names another.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskq.errors import ConfigError

LEGAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_LENGTH = 249
DLQ_SUFFIX = ".dlq"
DLQ_PARTITIONS = 1
RULE = "letters, digits, '.', '_', '-'; at most 249"


def is_legal(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return 0 < len(name) <= MAX_LENGTH and set(name) <= LEGAL_CHARS and name not in (".", "..")


def check_topic(name: str) -> str:
    """``name``, or ConfigError when Kafka would refuse it."""
    if not is_legal(name):
        raise ConfigError(f"illegal topic name {name!r} ({RULE})")
    return name


def task_topic(prefix: str, task_name: str) -> str:
    """The topic of task ``task_name``; its dead-letter topic must be a legal name too."""
    topic = prefix + task_name
    if not is_legal(topic):
        raise ConfigError(f"task name {task_name!r} gives an invalid Kafka topic {topic!r} ({RULE})")
    if not is_legal(dlq_topic(topic)):
        raise ConfigError(f"task name {task_name!r} is too long: its dead-letter topic {dlq_topic(topic)!r} "
                          f"would be longer than {MAX_LENGTH} characters")
    return topic


def collision_key(topic: str) -> str:
    """Kafka refuses a topic whose name equals an existing one's once '.' is read as '_' (their metric
    names would be the same): topics with one collision key cannot both exist."""
    return topic.replace(".", "_")


def task_topics(prefix: str, task_name: str, priorities: int = 1) -> list[str]:
    """The topics of task ``task_name``, one per priority level (level 0 is the task's topic)."""
    return [task_topic(prefix, task_name)] + [task_topic(prefix, f"{task_name}.p{p}") for p in range(1, priorities)]


def is_dlq(topic: str) -> bool:
    """Whether ``topic`` holds dead letters."""
    return topic.endswith(DLQ_SUFFIX)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def dlq_origin(dlq: str) -> str:
    """The topic whose dead letters ``dlq`` holds."""
    return dlq.removesuffix(DLQ_SUFFIX)


def events_topic(prefix: str) -> str:
    """The default events topic for ``topic_prefix``."""
    return prefix + "events"


def tier_topic(group: str, tiers: Sequence[float], delay: float) -> str:
    """The delay-tier topic for a message due in ``delay`` seconds: the smallest tier covering it."""
    for tier in tiers:
        if delay <= tier:
            return _tier(group, tier)
    return _tier(group, tiers[-1])


def tier_topics(group: str, tiers: Sequence[float]) -> list[str]:
    """Every delay-tier topic of ``group``."""
    return [_tier(group, tier) for tier in tiers]


def tier_prefix(group: str) -> str:
    """The start of the name of every delay-tier topic of ``group``."""
    return f"{group}.delay."


def is_tier_topic(group: str, topic: str) -> bool:
    """Whether ``topic`` is one of ``group``'s delay-tier topics."""
    return topic.startswith(tier_prefix(group))


def delay_group(group: str) -> str:
    """The consumer group whose forwarders read ``group``'s delay tiers."""
    return f"{group}.delay"


def _tier(group: str, tier: float) -> str:
    return f"{tier_prefix(group)}{tier:g}s"
