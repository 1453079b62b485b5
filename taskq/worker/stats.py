"""The worker's counters, kept by a hook like any other (:class:`StatsHook`); nothing else counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskq.brokers.base import Record
from taskq.execution import Kind
from taskq.hooks import Hook

if TYPE_CHECKING:
    from taskq.execution import Outcome
    from taskq.results.base import ResultRecord


@dataclass
class WorkerStats:
    """A worker's counters (``Worker.run`` returns them)."""

    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    rejected: int = 0
    skipped: int = 0  # redelivered with a final result already stored
    abandoned: int = 0  # not started before stop or revoke; left uncommitted for redelivery
    forwarded: int = 0  # delayed messages moved back to their task topic
    revoked: int = 0  # revoked before they ran, or terminated
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        """Records with a durable outcome, or skipped as already finished."""
        return sum(self.by_kind.values()) + self.skipped


class StatsHook(Hook):
    """Keeps :class:`WorkerStats` from the hook calls."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    def received(self, records: Sequence[Record], now: float) -> None:
        self.stats.received += len(records)

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        stats = self.stats
        by_kind = stats.by_kind
        success = Kind.SUCCESS
        successes = 0
        for o in outcomes:  # kinds compared by identity: an Enum's .value and hash are Python calls
            kind = o.kind
            if kind is success:
                successes += 1
            else:
                by_kind[kind.value] = by_kind.get(kind.value, 0) + 1
        if successes:
            by_kind["success"] = by_kind.get("success", 0) + successes
        stats.succeeded = by_kind.get("success", 0)
        stats.retried = by_kind.get("retry", 0)
        stats.dead = by_kind.get("dead", 0)
        stats.rejected = by_kind.get("rejected", 0)
        stats.revoked = by_kind.get("revoked", 0)

    def skipped(self, records: Sequence[Record], results: Sequence[ResultRecord | None]) -> None:
        self.stats.skipped += len(records)

    def abandoned(self, records: Sequence[Record]) -> None:
        self.stats.abandoned += len(records)

    def forwarded(self, records: Sequence[Record]) -> None:
        self.stats.forwarded += len(records)
