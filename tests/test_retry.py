"""Unit tests (no Kafka, no Redis): Retry policy and delay-tier topics."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq import Taskq
from taskq.retry import RetryPolicy
from taskq.topics import tier_topic, tier_topics


def test_retry_delay_countdown_and_default() -> None:
    policy = RetryPolicy(default_retry_delay=7.0)
    assert policy.delay(0) == 7.0
    assert policy.delay(5) == 7.0
    assert policy.delay(3, countdown=2.5) == 2.5
    assert policy.delay(3, countdown=-4) == 0.0


def test_retry_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retry_backoff=True, retry_jitter=False, retry_backoff_max=20.0)
    assert [policy.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    factor3 = RetryPolicy(retry_backoff=3, retry_jitter=False)
    assert [factor3.delay(n) for n in range(3)] == [3.0, 6.0, 12.0]


def test_retry_backoff_after_a_thousand_attempts_stays_at_its_max() -> None:
    """2 ** 1024 is too large for a float: the 1,025th retry of a task with a large max_retries raised
    OverflowError in the worker instead of waiting retry_backoff_max."""
    policy = RetryPolicy(max_retries=5000, retry_backoff=True, retry_jitter=False, retry_backoff_max=30.0)
    assert [policy.delay(n) for n in (1023, 1024, 4999)] == [30.0, 30.0, 30.0]


def test_retry_backoff_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(retry_backoff=2, retry_jitter=True, retry_backoff_max=50.0)
    for attempts in range(8):
        upper = min(50.0, 2 * 2 ** attempts)
        samples = [policy.delay(attempts) for _ in range(200)]
        assert all(0.0 <= d <= upper for d in samples), (attempts, max(samples))
        assert len(set(samples)) > 1  # jitter actually varies
    assert max(policy.delay(30) for _ in range(200)) <= 50.0


def test_should_retry() -> None:
    policy = RetryPolicy(max_retries=2, autoretry_for=(ValueError, OSError), dont_autoretry_for=(UnicodeError,))
    assert policy.should_retry(ValueError("x"), 0)
    assert policy.should_retry(ConnectionError("x"), 1)  # subclass of OSError
    assert not policy.should_retry(ValueError("x"), 2)  # attempts exhausted
    assert not policy.should_retry(KeyError("x"), 0)  # not listed
    assert not policy.should_retry(UnicodeDecodeError("utf-8", b"", 0, 1, "r"), 0)  # excluded
    assert not RetryPolicy().should_retry(ValueError("x"), 0)  # nothing is autoretried by default


@pytest.mark.parametrize("delay,topic", [(0.0, "g.delay.1s"), (0.5, "g.delay.1s"), (1.0, "g.delay.1s"),
                                         (1.01, "g.delay.10s"), (10, "g.delay.10s"),
                                         (59, "g.delay.60s"), (600, "g.delay.600s"),
                                         (10_000, "g.delay.600s")])
def test_tier_topic(delay: float, topic: str) -> None:
    assert tier_topic("g", (1.0, 10.0, 60.0, 600.0), delay) == topic


def test_tier_topics_names() -> None:
    assert tier_topics("taskq.app", (0.5, 2.0)) == ["taskq.app.delay.0.5s", "taskq.app.delay.2s"]
    assert tier_topic("taskq.app", (0.5, 2.0), 0.25) == "taskq.app.delay.0.5s"


def test_app_delay_topics_belong_to_its_group(tmp_path: Path) -> None:
    app = Taskq("tiers", local_path=str(tmp_path / "q.db"), retry_tiers=(2.0, 20.0))
    assert app.delay_topics == ["taskq.tiers.delay.2s", "taskq.tiers.delay.20s"]
    assert app.delay_topic(3) == "taskq.tiers.delay.20s"
    other = Taskq("tiers", local_path=str(tmp_path / "q.db"), group="custom", retry_tiers=(2.0, 20.0))
    assert other.delay_topics[0] == "custom.delay.2s"
