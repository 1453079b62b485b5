"""LLM token and cost accounting for ``/metrics``, read from the result backend.

Events carry no usage; an LLM task stores it in its result's ``meta["llm"]`` (model, input_tokens,
output_tokens, cost). This thread reads the results of succeeded tasks in batches (one ``get_many``
round trip per batch, at most ``per_second`` results a second, the rest counted as skipped) and
feeds the counters.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from taskq.app import Taskq
from taskq.errors import TaskqError

log = logging.getLogger("taskq.monitor")
Sink = Callable[[str, str, int, int, float], None]  # task, model, input tokens, output tokens, cost


class UsageReader:
    """Looks up ``meta["llm"]`` of succeeded tasks and hands it to ``sink``."""

    def __init__(self, app: Taskq, sink: Sink, per_second: int = 2000, batch: int = 500) -> None:
        self.app = app
        self.sink = sink
        self.per_second = per_second
        self.batch = batch
        self.read = 0
        self.skipped = 0
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=per_second * 5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskq-monitor-usage", daemon=True)

    def start(self) -> UsageReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def observe(self, event: dict[str, Any]) -> None:
        """Event listener: queue succeeded tasks (drop and count when the queue is full)."""
        if event.get("type") == "task-succeeded" and isinstance(event.get("id"), str):
            try:
                self._queue.put_nowait((event["id"], str(event.get("task") or "")))
            except queue.Full:
                self.skipped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            taken: list[tuple[str, str]] = []
            try:
                taken.append(self._queue.get(timeout=0.5))
                while len(taken) < self.batch:
                    taken.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if not taken:
                continue
            try:
                records = self.app.backend.get_many([i for i, _ in taken])
            except TaskqError as exc:
                log.warning("usage: cannot read results: %s", exc)
                self.skipped += len(taken)
                self._stop.wait(1.0)
                continue
            for (_id, task), record in zip(taken, records):
                llm = record.meta.get("llm") if record is not None and isinstance(record.meta, dict) else None
                if isinstance(llm, dict):
                    self.sink(task, str(llm.get("model") or ""), int(llm.get("input_tokens") or 0),
                              int(llm.get("output_tokens") or 0), float(llm.get("cost") or 0.0))
            self.read += len(taken)
            # at most per_second results a second
            self._stop.wait(max(0.0, len(taken) / self.per_second - (time.monotonic() - started)))
