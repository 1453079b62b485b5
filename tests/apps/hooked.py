"""``tests.apps.reliable`` with a hook that raises in every kind it overrides (``HOOKED_RAISE=1``).

The hook must change no task's outcome: the worker logs it once per kind and carries on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from taskq.brokers.base import Record
from taskq.execution import Outcome
from taskq.hooks import Hook
from tests.apps.reliable import app, echo, flaky, stamp

__all__ = ["app", "echo", "flaky", "stamp"]


class Broken(Hook):
    """Raises on received, started and finished."""

    def received(self, records: Sequence[Record], now: float) -> None:
        raise RuntimeError("broken hook: received")

    def started(self, record: Record) -> None:
        raise RuntimeError("broken hook: started")

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        raise RuntimeError("broken hook: finished")


if os.environ.get("HOOKED_RAISE") == "1":
    app.add_hook(Broken())
