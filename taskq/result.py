"""``AsyncResult``: the caller's handle on a task's state and outcome."""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from taskq.errors import TaskFailed, TimeoutError
from taskq.results.base import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS, ResultRecord

if TYPE_CHECKING:
    from taskq.app import Taskq


SYNC_SUBTASK = ("never call result.get() within a task: it holds the task's pool slot while it waits, so it can "
                "wait for ever; chain the tasks instead (or pass disable_sync_subtasks=False)")


class AsyncResult:
    """State and outcome of task ``id``, read from the app's result backend."""

    def __init__(self, id: str, app: Taskq) -> None:  # noqa: A002 - Celery's name
        self.id = id
        self.app = app
        self._record: ResultRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.status}>"

    def _fetch(self) -> ResultRecord | None:
        if self._record is None or not self._record.ready:
            self._record = self.app.backend.get(self.id)
        return self._record

    @property
    def status(self) -> str:
        """PENDING (unknown or queued), STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        record = self._fetch()
        return PENDING if record is None else record.status

    state = status

    def ready(self) -> bool:
        return self.status in READY_STATES

    def successful(self) -> bool:
        return self.status == SUCCESS

    def failed(self) -> bool:
        return self.status == FAILURE

    @property
    def result(self) -> Any:
        """The return value, or the exception for a failed task, or None while not ready."""
        record = self._fetch()
        if record is None:
            return None
        return rebuild_exception(record) if record.status in (FAILURE, REVOKED) else record.result

    info = result

    @property
    def traceback(self) -> str | None:
        record = self._fetch()
        return None if record is None else record.traceback

    @property
    def record(self) -> ResultRecord | None:
        """The full stored record (worker, attempts, timestamps, meta)."""
        return self._fetch()

    def get(self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True) -> Any:
        """Wait for the outcome: return the value, re-raise the task's error, or raise TimeoutError.

        Inside a running task this is refused, as in Celery (``disable_sync_subtasks=False`` allows it):
        the waiting task holds a pool slot (or, in the asyncio pool, the whole event loop) that the task
        it waits for may need, so with every slot waiting nothing runs again.
        """
        if disable_sync_subtasks and self.app.current_request.get() is not None:
            raise RuntimeError(SYNC_SUBTASK)
        record = self._record if self._record is not None and self._record.ready else None
        if record is None:
            record = self.app.backend.wait(self.id, timeout)
            self._record = record
        if record is None or not record.ready:  # the state the wait last read: no read more, which may fail
            raise TimeoutError(f"task {self.id} not ready after {timeout} s "
                               f"(status {PENDING if record is None else record.status})")
        if record.status in (FAILURE, REVOKED):  # REVOKED raises TaskRevoked
            exc = rebuild_exception(record)
            if propagate:
                raise exc
            return exc
        return record.result

    def wait(self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True) -> Any:
        return self.get(timeout, propagate, disable_sync_subtasks)

    def stream(self, timeout: float | None = None) -> Iterator[Any]:
        """Partial results (e.g. LLM tokens) as the task publishes them; ends when it is done."""
        return self.app.backend.stream(self.id, timeout)

    def revoke(self, terminate: bool = False) -> None:
        """Do not run this task: workers skip it (state REVOKED); ``terminate`` also ends it if it is
        running (processes and asyncio pools)."""
        from taskq.revocations import revoke

        revoke(self.app, [self.id], terminate)
        self._record = None

    @property
    def children(self) -> list[AsyncResult]:
        """What this task (or group, chord) sent, in send order: the workflow tree below it."""
        return [AsyncResult(i, self.app) for i in self.app.backend.children(self.id)]

    @property
    def parent_id(self) -> str | None:
        record = self._fetch()
        return None if record is None else record.parent_id

    @property
    def root_id(self) -> str | None:
        record = self._fetch()
        return None if record is None else (record.root_id or record.id)

    def forget(self) -> None:
        self.app.backend.forget([self.id])
        self._record = None


def rebuild_exception(record: ResultRecord) -> BaseException:
    """The task's exception with its remote traceback as a note.

    Only builtin types and types from modules this process already imported are rebuilt (importing a
    module named by a result would run code); others become :class:`TaskFailed`.
    """
    error = record.error or "Exception: unknown error"
    qualname, _, message = error.partition(": ")
    module, _, name = qualname.rpartition(".")
    cls: Any = getattr(builtins, name, None) if module in ("", "builtins") else getattr(
        sys.modules.get(module), name, None)
    exc: BaseException
    try:
        exc = cls(message) if isinstance(cls, type) and issubclass(cls, Exception) else TaskFailed(error)
    except Exception:
        exc = TaskFailed(error)
    if record.traceback:
        exc.add_note(f"Remote traceback (task {record.id}):\n{record.traceback}")
    return exc
