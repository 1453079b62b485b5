"""The finisher thread: makes outcomes durable, then reports their records finished.

Hand-offs:
- in: ``put(record, outcome)``, the pool's done callback (any pool thread), onto a queue; ``outcome``
  None means the record was abandoned before it started;
- out: ``on_finished([(record, durable), ...])`` once per batch, after every result is stored and
  every retry and dead letter acknowledged; the worker hands the offsets to the consumer thread and
  releases the records' keys;
- ``on_outcome(outcome)`` for each outcome made durable (the worker's counters listen here).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from taskq import flow
from taskq.app import Taskq
from taskq.brokers.base import Record
from taskq.deadletter import dead_letter_headers
from taskq.execution import Kind, Outcome
from taskq.message import H_CONTENT_TYPE, H_ORIGIN
from taskq.worker.sender import Outgoing, Sender, retrying

MAX_BATCH = 2000  # outcomes made durable together (one pipelined result write)
Finished = list[tuple[Record, bool]]  # (record, its offset may be committed)


class Finisher:
    """Batches outcomes from the pool; stores results, sends follow-up messages, reports them finished."""

    def __init__(self, app: Taskq, sender: Sender, worker_name: str,
                 on_finished: Callable[[Finished], None], on_outcome: Callable[[Outcome], None]) -> None:
        self.app = app
        self.sender = sender
        self.worker_name = worker_name
        self._on_finished = on_finished
        self._on_outcome = on_outcome
        self._queue: queue.SimpleQueue[tuple[Record, Outcome | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="taskq-finisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: Record, outcome: Outcome | None) -> None:
        """The pool's done callback (thread safe)."""
        self._queue.put((record, outcome))

    def stop(self, timeout: float) -> None:
        """Finish what was put before, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            batch = [item]
            try:
                while len(batch) < MAX_BATCH:
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        self.finish(batch)
                        return
                    batch.append(nxt)
            except queue.Empty:
                pass
            self.finish(batch)

    def finish(self, batch: list[tuple[Record, Outcome | None]]) -> None:
        """Make a batch of outcomes durable, then report their records finished.

        Order matters for a crash in between: canvas follow-ups (next chain step, chord bookkeeping
        and body, callbacks) are acknowledged before any result is stored (a redelivery finding no result
        runs again and sends them again, with the same ids); a final FAILURE is stored only after its
        dead letter is acknowledged (a redelivery finding FAILURE is skipped, so the letter must exist by
        then); a RETRY state is stored before its retry is sent (a redelivery finding RETRY runs again).
        """
        backend = self.app.backend
        outcomes = [o for _, o in batch if o is not None]
        plan = flow.after_outcomes(self.app, outcomes)
        if plan:
            flow.settle(self.app, plan, self._deliver, retrying)
        first = [o.result for o in outcomes if o.result is not None and o.kind is not Kind.DEAD]
        if first:
            retrying("store results", lambda: backend.store_many(first))
        sends = [self.follow_up(o) for o in outcomes if o.kind is not Kind.SUCCESS and o.kind is not Kind.REVOKED]
        if sends:
            self.sender.send_all(sends)
        failures = [o.result for o in outcomes if o.result is not None and o.kind is Kind.DEAD]
        if failures:
            retrying("store results", lambda: backend.store_many(failures))
        for o in outcomes:
            self._on_outcome(o)
        self._on_finished([(record, outcome is not None) for record, outcome in batch])

    def _deliver(self, messages: list[flow.Outgoing]) -> None:
        """Send canvas follow-ups and wait for their acknowledgement."""
        self.sender.send_all([self.app.outgoing(m, topic, partitions, serializer)
                              for m, topic, partitions, serializer in messages])

    def follow_up(self, outcome: Outcome) -> Outgoing:
        """The message a retry or dead letter must produce before the offset may be committed."""
        record = outcome.record
        app = self.app
        if outcome.kind is Kind.RETRY and outcome.message is not None:
            # re-encode with the serializer the message came in (a pickle task's args may not be JSON)
            content_type = (record.header(H_CONTENT_TYPE) or b"application/json").decode(errors="replace")
            serializer = next((n for n in app.settings.accept_content
                               if app.serializers.get(n).content_type == content_type), "json")
            value, headers = outcome.message.encode(app.serializers, serializer)
            headers.append((H_ORIGIN, record.topic.encode()))
            return app.delay_topic(outcome.retry_delay), record.key, value, headers
        headers = dead_letter_headers(record, outcome.kind.value, outcome.error_type, outcome.error_message,
                                      outcome.error_traceback, self.worker_name)
        # record.topic, not the origin-topic header: the worker consumes task topics only, and a header
        # naming a topic without a dead-letter topic would block the finisher forever
        return app.dlq_topic(record.topic), record.key, record.value, headers
