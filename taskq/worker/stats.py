"""The worker's counters, and the one place where they are counted.

The worker reports each state change by one call (``received``, ``skipped``, ``outcome``,
``abandoned``, ``forwarded``); nothing else in the worker counts. These calls are where typed hooks
attach: ``WorkerStats`` is the first listener.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskq.execution import Kind, Outcome


@dataclass
class WorkerStats:
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

    def on_received(self, count: int) -> None:
        """``count`` records were consumed (consumer thread)."""
        self.received += count

    def on_skipped(self) -> None:
        """A redelivered record whose task already has a final result (consumer thread)."""
        self.skipped += 1

    def on_outcome(self, outcome: Outcome) -> None:
        """An outcome was made durable (finisher thread)."""
        kind = outcome.kind
        self.by_kind[kind.value] = self.by_kind.get(kind.value, 0) + 1
        if kind is Kind.SUCCESS:
            self.succeeded += 1
        elif kind is Kind.RETRY and outcome.message is not None:
            self.retried += 1
        elif kind is Kind.DEAD:
            self.dead += 1
        elif kind is Kind.REVOKED:
            self.revoked += 1
        else:  # rejected, or a retry without a message to send: dead-lettered as rejected
            self.rejected += 1

    def on_abandoned(self, count: int) -> None:
        """``count`` records will not run here (stop or revoke): left uncommitted for redelivery."""
        self.abandoned += count

    def on_forwarded(self, count: int) -> None:
        """``count`` delayed messages went back to their task topics (forwarder thread)."""
        self.forwarded += count
