"""``track_started=True``: store STARTED in the result backend as a task begins (Celery's setting)."""

from __future__ import annotations

from taskq.brokers.base import Record
from taskq.hooks import Hook
from taskq.message import H_ATTEMPTS, H_ID, H_TASK
from taskq.results.base import STARTED, ResultBackend, ResultRecord


class TrackStarted(Hook):
    """Writes STARTED on the pool thread before the task runs, so it always precedes the outcome's write.

    A failed write is logged (once) by the hook machinery and the task runs anyway.
    """

    def __init__(self, backend: ResultBackend, worker: str) -> None:
        self.backend = backend
        self.worker = worker

    def started(self, record: Record) -> None:
        headers = dict(record.headers)
        task_id = headers.get(H_ID)
        if task_id is None:
            return  # not a task message: it will be rejected, no result is possible
        name = headers.get(H_TASK)
        attempts = int(headers.get(H_ATTEMPTS, b"0")) + 1
        self.backend.store_many([ResultRecord(task_id.decode(errors="replace"), STARTED,
                                              task=name.decode(errors="replace") if name else None,
                                              worker=self.worker, attempts=attempts)])
