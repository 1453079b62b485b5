"""Periodic schedules: when a task is due (a cron expression or a fixed interval) and the id of each tick.

Pure: no broker, no clock of its own. Interval ticks are aligned to the epoch (``every=60`` ticks on
whole minutes), so every beat process computes the same ticks, and a tick's task id is derived from
the schedule's name and the tick's time, so a tick sent twice is one task.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from taskq.cron import Cron
from taskq.errors import ConfigError


@dataclass(frozen=True)
class Periodic:
    """Send ``task`` with ``args``/``kwargs`` on every tick of ``cron`` or of ``every`` seconds."""

    name: str
    task: str
    cron: Cron | None = None
    every: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str | None = None

    @classmethod
    def build(cls, name: str, task: str, cron: str | None = None, every: timedelta | float | None = None,
              args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
              key: str | None = None) -> Periodic:
        if (cron is None) == (every is None):
            raise ConfigError(f"periodic task {name!r}: give cron='*/5 * * * *' or every=timedelta(...), one of them")
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        if seconds is not None and not (0 < seconds < math.inf):
            raise ConfigError(f"periodic task {name!r}: every must be a positive number of seconds, not {every}")
        return cls(name, task, Cron.parse(cron) if cron else None, seconds, tuple(args), dict(kwargs or {}), key)

    def last_tick(self, now: float) -> float:
        """The latest tick at or before ``now`` (epoch seconds)."""
        if self.every is not None:
            return float(math.floor(now / self.every) * self.every)
        assert self.cron is not None
        return self.cron.last_at_or_before(_utc(now)).timestamp()

    def next_tick(self, now: float) -> float:
        """The first tick strictly after ``now``."""
        if self.every is not None:
            return float((math.floor(now / self.every) + 1) * self.every)
        assert self.cron is not None
        return self.cron.next_after(_utc(now)).timestamp()

    def task_id(self, group: str, tick: float) -> str:
        """The id of the task sent for ``tick``: the same in every beat, before and after a restart."""
        return hashlib.sha256(f"{group}\0{self.name}\0{tick:.3f}".encode()).hexdigest()[:32]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
