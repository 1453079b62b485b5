"""The worker's revoke gate and its idle-member check.

Hand-offs: the pool asks ``runnable(record)`` before it starts a record (any pool thread); a record
refused because it was revoked comes back through the wrapped ``done`` with no outcome, which is
turned here into a REVOKED outcome (so its offset is committed, not left for redelivery). The
:class:`~taskq.revocations.Revocations` thread calls ``pool.terminate(id)`` for ``terminate=True``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from taskq import execution
from taskq.app import Taskq
from taskq.brokers.base import Record
from taskq.errors import TaskqError
from taskq.pools import Done, DoneMany, Pool
from taskq.revocations import Revocations

log = logging.getLogger("taskq.worker")


class RevokeGate:
    """Keeps revoked records from running and gives them a REVOKED outcome."""

    def __init__(self, app: Taskq, pool: Pool, worker_name: str) -> None:
        self.worker_name = worker_name
        self.revocations = Revocations(app, pool.terminate)

    def start(self) -> None:
        """Start reading the revocations in the background; :meth:`wait` before running anything."""
        self.revocations.begin()

    def wait(self) -> None:
        """Until the revocations stored so far are read (at most 10 s, then they are followed meanwhile)."""
        if not self.revocations.wait(10.0):
            log.warning("worker %s: revocations not read within 10 s; following them in the background",
                        self.worker_name)

    def stop(self) -> None:
        self.revocations.stop()

    def _revoked_id(self, record: Record) -> str | None:
        if not len(self.revocations):
            return None
        raw = record.header("id")
        task_id = raw.decode(errors="replace") if raw else None
        return task_id if task_id is not None and task_id in self.revocations else None

    def note(self, task_id: str) -> None:
        """``task_id`` is revoked (its stored state says so) though the revocations read so far may not
        say it yet: the pool will not run it and it gets its REVOKED outcome."""
        self.revocations.add(task_id)

    def runnable(self, record: Record) -> bool:
        return not self.revocations or self._revoked_id(record) is None

    def wrap_done(self, done: Done) -> Done:
        """``done`` that turns "not run" into REVOKED for revoked records."""
        def gated(record: Record, outcome: execution.Outcome | None) -> None:
            if outcome is None and (task_id := self._revoked_id(record)) is not None:
                outcome = execution.revoked(record, self.worker_name, task_id)
            done(record, outcome)
        return gated

    def wrap_done_many(self, done_many: DoneMany) -> DoneMany:
        """``done_many`` (a batch's outcomes) with the same REVOKED rule as :meth:`wrap_done`."""
        def gated(pairs: list[tuple[Record, execution.Outcome | None]]) -> None:
            out: list[tuple[Record, execution.Outcome | None]] = []
            for record, outcome in pairs:
                if outcome is None and (task_id := self._revoked_id(record)) is not None:
                    outcome = execution.revoked(record, self.worker_name, task_id)
                out.append((record, outcome))
            done_many(out)
        return gated


class IdleCheck:
    """Warns once when the group has more members than a topic of this worker has partitions."""

    def __init__(self, app: Taskq, worker_name: str, topics: list[str],
                 check: Callable[[Taskq, list[str]], str | None]) -> None:
        self.app = app
        self.worker_name = worker_name
        self.topics = topics
        self.check = check
        self._warned = False
        self._running = threading.Lock()

    def after_assignment(self) -> None:
        """Check in a thread of its own (admin calls must not hold up the consumer thread)."""
        if not self._warned and self._running.acquire(blocking=False):
            threading.Thread(target=self._run, name="taskq-idle-check", daemon=True).start()

    def _run(self) -> None:
        try:
            warning = self.check(self.app, self.topics)
        except TaskqError:  # the local broker cannot describe groups; a broker hiccup is not worth more
            warning = None
        finally:
            self._running.release()
        if warning and not self._warned:
            self._warned = True
            log.warning("worker %s: %s", self.worker_name, warning)
