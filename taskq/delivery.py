"""Holding work back until the messages produced before it are acknowledged by the broker.

The events hook produces task events in rounds (one per publishing pass) and the worker asks it to
hold a batch of finished records until every event produced so far is acknowledged; only then are
their offsets committed, so a ``kill -9`` right after a commit loses no event while the broker is up.

A hold never waits longer than ``bound`` seconds: after that it is released anyway, logged once, and
later holds wait no more until a message is acknowledged again (an events topic that is unavailable
delays commits by ``bound`` once, never for ever, and never slows the worker down for long).

Threads: ``open``/``close``/``count`` and ``hold`` come from the publisher (one at a time, under the
caller's lock); delivery reports from whichever thread polls the producer; ``expire`` from any.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from taskq.brokers.base import DeliveryCallback, Record

log = logging.getLogger("taskq.events")


class DeliveryGate:
    """Counts unacknowledged messages per round; releases holds once no earlier round has any."""

    def __init__(self, bound: float, on_error: Callable[[int, Exception], None]) -> None:
        self.bound = bound
        self._on_error = on_error  # (messages' event count, error) of a failed delivery
        self._lock = threading.Lock()
        self._round = 0
        self._unacked: dict[int, int] = {}  # round -> messages not acknowledged (+1 while the round is open)
        self._holds: deque[tuple[int, float, Any, Callable[[Any], None]]] = deque()  # (round, deadline, ...)
        self._late = False  # a hold outlived the bound and nothing was acknowledged since: holds wait no more
        self._late_logged = False

    @property
    def waiting(self) -> bool:
        """Whether some hold waits for an acknowledgement."""
        return bool(self._holds)

    def open(self) -> None:
        """Start a round: holds made now wait for the messages counted until ``close``."""
        with self._lock:
            self._round += 1
            self._unacked[self._round] = 1

    def close(self) -> None:
        self._done(self._round)

    def count(self, events: int) -> DeliveryCallback:
        """One more message of the current round; returns its delivery report (call it with the
        error if the message could not even be queued)."""
        round_ = self._round
        with self._lock:
            self._unacked[round_] += 1

        def report(err: Exception | None, _record: Record | None) -> None:
            if err is not None:
                self._on_error(events, err)
            elif self._late:
                self._late = False
            self._done(round_)
        return report

    def hold(self, items: Any, release: Callable[[Any], None], now: float) -> None:
        """``release(items)`` once the messages of this round and every earlier one are acknowledged."""
        if self._late:
            release(items)
            return
        with self._lock:
            self._holds.append((self._round, now + self.bound, items, release))

    def expire(self, now: float) -> None:
        """Release the holds older than the bound (see the module docstring)."""
        if self._holds and self._holds[0][1] <= now:
            with self._lock:
                due = []
                while self._holds and self._holds[0][1] <= now:
                    due.append(self._holds.popleft())
                self._late = True
            if not self._late_logged:
                self._late_logged = True
                log.warning("task events not acknowledged within %g s (events topic unavailable?): committing "
                            "offsets without waiting for them until the broker acknowledges events again "
                            "(logged once)", self.bound)
            for _, _, items, release in due:
                release(items)

    def release_all(self) -> None:
        with self._lock:
            due = list(self._holds)
            self._holds.clear()
        for _, _, items, release in due:
            release(items)

    def _done(self, round_: int) -> None:
        with self._lock:
            left = self._unacked[round_] - 1
            if left:
                self._unacked[round_] = left
                return
            del self._unacked[round_]
            floor = min(self._unacked, default=self._round + 1)
            due = []
            while self._holds and self._holds[0][0] < floor:
                due.append(self._holds.popleft())
        for _, _, items, release in due:
            release(items)
