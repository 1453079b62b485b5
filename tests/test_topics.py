"""Unit tests (no Kafka, no Redis): topic names and their validation (taskq/topics.py)."""

from __future__ import annotations

import pytest

from taskq import ConfigError
from taskq.topics import (check_topic, dlq_origin, dlq_topic, is_dlq, is_legal, is_tier_topic, task_topic, task_topics,
                          tier_topic, tier_topics)


def test_task_topics_per_priority_level() -> None:
    assert task_topics("taskq.", "shop.infer") == ["taskq.shop.infer"]
    assert task_topics("taskq.", "shop.infer", 3) == ["taskq.shop.infer", "taskq.shop.infer.p1",
                                                      "taskq.shop.infer.p2"]


def test_dead_letter_names_round_trip() -> None:
    assert dlq_topic("taskq.a") == "taskq.a.dlq" and is_dlq("taskq.a.dlq") and not is_dlq("taskq.a")
    assert dlq_origin(dlq_topic("taskq.a")) == "taskq.a"


def test_delay_tier_topics_are_recognised_per_group() -> None:
    assert tier_topic("g", (1.0, 60.0), 5) == "g.delay.60s"
    assert all(is_tier_topic("g", t) for t in tier_topics("g", (1.0, 60.0)))
    assert not is_tier_topic("g", "h.delay.1s") and not is_tier_topic("g", "taskq.g.delay")


@pytest.mark.parametrize("name", ["", ".", "..", "has space", "slash/name", "ü", "x" * 250])
def test_kafka_refuses_these_names(name: str) -> None:
    assert not is_legal(name)
    with pytest.raises(ConfigError, match="illegal topic name"):
        check_topic(name)


def test_task_name_giving_a_bad_topic_names_both() -> None:
    assert check_topic("a.B_c-9" * 3) == "a.B_c-9" * 3
    with pytest.raises(ConfigError, match="task name 'x y' gives an invalid Kafka topic 'taskq.x y'"):
        task_topic("taskq.", "x y")
