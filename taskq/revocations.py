"""Revocations: ``AsyncResult(id).revoke()`` / ``taskq revoke ID...`` and what workers do with them.

A revocation is written twice: the state REVOKED in the result backend (a final state, so a worker
that takes the task's message later skips it and commits its offset, as it does for any finished
task), and a record keyed by the task id on the compacted topic ``<topic_prefix>revoked``. Every
worker tails that topic from its start (no consumer group: each worker sees every revocation), so a
task already taken into a worker's queue is skipped too, and ``terminate=True`` ends a running one
(processes and asyncio pools). The topic keeps the latest record per id for ``result_expires``, the
life of the REVOKED state: revocations survive a worker restart and expire with the results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from taskq.app import Taskq
from taskq.errors import TaskqError
from taskq.results.base import REVOKED, ResultRecord
from taskq.serialization import JSON

log = logging.getLogger("taskq.revocations")


def revoked_topic(app: Taskq) -> str:
    """The compacted topic of the app's revocations."""
    return app.settings.topic_prefix + "revoked"


def revoke(app: Taskq, task_ids: Iterable[str], terminate: bool = False) -> list[str]:
    """Revoke tasks; returns the ids revoked (those that already finished are left alone)."""
    now = time.time()
    todo = app.backend.store_unless_final([ResultRecord(i, REVOKED, None, "taskq.errors.TaskRevoked: revoked",
                                                        date_done=now) for i in dict.fromkeys(task_ids)])
    if not todo:
        return []
    topic = revoked_topic(app)
    app.broker.ensure_compacted_topic(topic, app.settings.result_expires, app.settings.replication_factor)
    producer = app.producer
    for task_id in todo:
        value = JSON.dumps({"id": task_id, "terminate": terminate, "ts": now,
                            "expires": now + app.settings.result_expires})
        producer.produce(topic, task_id.encode(), value, [])
    app.flush()
    return todo


class Revocations:
    """The revoked task ids one worker knows, kept current by a thread tailing the revocations topic.

    ``on_terminate(task_id)`` is called (from that thread) for a revocation asking to end a running task.
    """

    def __init__(self, app: Taskq, on_terminate: Callable[[str], object]) -> None:
        self.app = app
        self.on_terminate = on_terminate
        self._expires: dict[str, float] = {}
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskq-revocations", daemon=True)

    def __contains__(self, task_id: str) -> bool:
        expires = self._expires.get(task_id)
        return expires is not None and expires > time.time()

    def __len__(self) -> int:
        return len(self._expires)

    def add(self, task_id: str) -> None:
        """Known revoked from elsewhere (its stored REVOKED state), for the result expiry."""
        self._expires[task_id] = time.time() + self.app.settings.result_expires

    def start(self, timeout: float = 10.0) -> bool:
        """Start tailing; wait (up to ``timeout``) until the revocations already stored are read."""
        self.begin()
        return self.wait(timeout)

    def begin(self) -> None:
        """Start tailing in the background (:meth:`wait` for the stored revocations to be read)."""
        self._thread.start()

    def wait(self, timeout: float = 10.0) -> bool:
        """Whether the revocations stored when tailing began have been read, waiting up to ``timeout``."""
        return self._caught_up.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        app = self.app
        topic = revoked_topic(app)
        try:
            app.broker.ensure_compacted_topic(topic, app.settings.result_expires, app.settings.replication_factor)
            marks = app.broker.watermarks(topic)
            ends = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
            if not ends:  # none stored: the worker need not wait for the reader to start
                self._caught_up.set()
            reader = app.broker.reader(topic, {p: lo for p, (lo, _hi) in marks.items()})
        except TaskqError as exc:
            log.warning("revocations are not followed (%s); revoked tasks are still skipped by their stored "
                      "REVOKED state", exc)
            self._caught_up.set()
            return
        try:
            while not self._stop.is_set():
                for record in reader.read(500, 0.2):
                    self._apply(record.value, initial=not self._caught_up.is_set())
                    if record.offset + 1 >= ends.get(record.partition, 0):
                        ends.pop(record.partition, None)
                if ends == {} and not self._caught_up.is_set():
                    self._caught_up.set()
                self._prune()
        except TaskqError as exc:
            log.error("stopped following revocations: %s", exc)
        finally:
            reader.close()
            self._caught_up.set()

    def _apply(self, value: bytes | None, initial: bool) -> None:
        if not value:
            return
        try:
            entry = JSON.loads(value)
            task_id, expires = str(entry["id"]), float(entry["expires"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable revocation: %r", value[:200])
            return
        if expires <= time.time():
            return
        self._expires[task_id] = expires
        if entry.get("terminate") and not initial:
            self.on_terminate(task_id)

    def _prune(self) -> None:
        now = time.time()
        if len(self._expires) > 1000:
            for task_id in [i for i, e in self._expires.items() if e <= now]:
                del self._expires[task_id]
