"""Retry policy: backoff delays and the delay-tier topics that stand in for delayed delivery.

Kafka cannot deliver a message later, so a delayed message goes to the smallest tier topic whose
delay covers it (:func:`taskq.topics.tier_topic`, ``<group>.delay.<seconds>s``, one set per consumer group so that each delayed
message has exactly one forwarder group); a forwarder in each worker moves it back to its task topic
once its ``eta`` has passed. The task partition is never blocked while a task waits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskq.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Celery's options: ``max_retries``, ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``."""

    max_retries: int = 3
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    default_retry_delay: float = 1.0
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True

    def __post_init__(self) -> None:
        count = self.max_retries
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"max_retries must be a whole number of retries, 0 or more, not {count!r} (taskq "
                              "never retries forever: give a bound, then the task is dead-lettered)")

    def should_retry(self, exc: BaseException, attempts: int) -> bool:
        """Whether a failure of attempt number ``attempts`` (0 = first run) is retried."""
        if attempts >= self.max_retries:
            return False
        return isinstance(exc, self.autoretry_for) and not isinstance(exc, self.dont_autoretry_for)

    def delay(self, attempts: int, countdown: float | None = None) -> float:
        """Seconds before the next attempt; exponential with full jitter when ``retry_backoff``."""
        if countdown is not None:
            return max(0.0, countdown)
        if not self.retry_backoff:
            return self.default_retry_delay
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(self.retry_backoff_max, factor * 2.0 ** min(attempts, 64))  # 2.0 ** 1024 overflows
        return random.uniform(0, delay) if self.retry_jitter else delay
