"""Store writes of the LLM calls running on one event loop, made together.

Every call in flight streams text deltas (partial results) and, once answered, adds its usage. Written one
by one, each is a store round trip on the event loop: with hundreds of calls in flight that was most of the
worker's CPU. :class:`LoopWrites` queues them and writes everything queued in one batch
(:meth:`ResultBackend.append_chunks` and :meth:`UsageStore.add`), at most ``interval`` after the first
item was queued, or at once when a call finishing awaits :meth:`LoopWrites.flush` (calls finishing in the
same loop iteration share that batch). A call's deltas between two batches are published as one chunk.

Order holds per task: a restart mark and the chunks around it are written in the order they were queued,
and a call returns only after its chunks and its usage are in the store (so a result never becomes ready
before the partial results it streamed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.llm.usage import Usage, UsageStore
    from taskq.results.base import ResultBackend

log = logging.getLogger("taskq.llm")

INTERVAL = 0.02  # seconds: the longest a queued delta waits for its batch


class LoopWrites:
    """Queued partial results and usage of one event loop's LLM calls; see the module docstring.

    Use from the loop's thread only. A failed chunk write fails the flush of each task it held (the task
    sees the store's error as it would have from a direct write); a failed usage write is logged, never
    raised (the tokens are spent, the call must not run again for it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: ResultBackend,
                 usage: Callable[[], UsageStore], interval: float = INTERVAL) -> None:
        self._loop = loop
        self._backend = backend
        self._usage_store = usage
        self._interval = interval
        self._chunks: list[list[Any]] = []  # [task_id, text parts (None: a restart mark)] in queue order
        self._open: dict[str, list[str]] = {}  # task id -> its parts list still open for more text
        self._usages: list[Usage] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._errors: dict[str, BaseException] = {}  # task id -> the error of a failed write of its chunks
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._now = False  # the scheduled write runs in the next loop iteration (a flush is waiting)

    def text(self, task_id: str, text: str) -> None:
        """Queue a text delta of ``task_id``'s partial results."""
        parts = self._open.get(task_id)
        if parts is None:
            parts = self._open[task_id] = [text]
            self._chunks.append([task_id, parts])
            self._schedule()
        else:
            parts.append(text)

    def restart(self, task_id: str) -> None:
        """Queue a restart mark: earlier chunks of ``task_id`` belong to a failed attempt."""
        self._open.pop(task_id, None)
        self._chunks.append([task_id, None])
        self._schedule()

    def usage(self, usage: Usage) -> None:
        """Queue one call's usage for the roll-ups."""
        self._usages.append(usage)
        self._schedule()

    async def flush(self, task_id: str | None = None) -> None:
        """Return once everything queued so far is written; raise the store's error if ``task_id``'s
        chunks could not be written."""
        if self._chunks or self._usages:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            if not self._now:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._loop.call_soon(self.write)
                self._now = True
            await asyncio.shield(waiter)
        if task_id is not None:
            error = self._errors.pop(task_id, None)
            if error is not None:
                raise error

    def forget(self, task_id: str) -> None:
        """Drop a recorded write error of ``task_id`` (its call ended another way)."""
        self._errors.pop(task_id, None)

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._interval, self.write)

    def write(self) -> None:
        """Write everything queued now (one chunk batch and one usage batch) and wake the flushes."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._now = False
        chunks, self._chunks = self._chunks, []
        self._open.clear()
        usages, self._usages = self._usages, []
        waiters, self._waiters = self._waiters, []
        try:
            if chunks:
                items = [(task_id, None if parts is None else "".join(parts)) for task_id, parts in chunks]
                try:
                    self._backend.append_chunks(items)
                except Exception as exc:  # noqa: BLE001 - handed to each task's flush
                    for task_id, _ in items:
                        self._errors[task_id] = exc
            if usages:
                try:
                    self._usage_store().add(usages)
                except Exception as exc:  # noqa: BLE001 - accounting never fails a finished call
                    for u in usages:
                        log.error("could not account LLM usage of task %s (user %s): %s", u.root, u.user, exc)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
