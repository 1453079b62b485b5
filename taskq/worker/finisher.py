"""The finisher thread: makes outcomes durable, then reports their records finished.

Hand-offs:
- in: ``put(record, outcome)``, the pool's done callback (any pool thread), onto a queue; ``outcome``
  None means the record was abandoned before it started; ``put_many(pairs)`` for a batch task's
  records, which are then made durable and reported finished together;
- out: ``on_finished([(record, durable), ...])`` once per batch, after every result is stored and
  every retry and dead letter acknowledged; the worker hands the offsets to the consumer thread and
  releases the records' keys;
- ``on_outcomes(outcomes)`` once per batch of outcomes made durable, before ``on_finished`` (the
  worker's hooks: counters, events; so a batch's events are queued before its offsets may commit);
- ``on_fatal(error)`` when an outage outlasted ``outage_timeout`` (or the thread failed otherwise): the
  thread ends, that batch and everything after it stay unfinished (uncommitted, redelivered), and the
  worker stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from taskq import flow
from taskq.app import Taskq
from taskq.brokers.base import Headers, Record
from taskq.deadletter import dead_letter_forms
from taskq.errors import BackendRefused, OutageTooLong, TaskqError
from taskq.execution import Kind, Outcome
from taskq.message import H_CONTENT_TYPE, H_ORIGIN
from taskq.results.base import FAILURE, ResultRecord
from taskq.worker.sender import Outgoing, Sender, retrying, run_thread

log = logging.getLogger("taskq.worker")
REFUSED_FOR = 10.0  # s: how long a write the backend refuses is tried again before giving up on it
MAX_BATCH = 2000  # outcomes made durable together (one pipelined result write)
Finished = list[tuple[Record, bool]]  # (record, its offset may be committed)
T = TypeVar("T")


class Finisher:
    """Batches outcomes from the pool; stores results, sends follow-up messages, reports them finished."""

    def __init__(self, app: Taskq, sender: Sender, worker_name: str,
                 on_finished: Callable[[Finished], None], on_outcomes: Callable[[list[Outcome]], None],
                 on_hold: Callable[[Record, float], None] | None = None,
                 on_fatal: Callable[[TaskqError], None] | None = None) -> None:
        self.app = app
        self.sender = sender
        self.worker_name = worker_name
        self._on_finished = on_finished
        self._on_outcomes = on_outcomes
        self._on_hold = on_hold  # a strict-order retry held in the worker: (its next attempt, delay)
        self._on_fatal = on_fatal
        self._queue: queue.SimpleQueue[tuple[Record, Outcome | None] | list[tuple[Record, Outcome | None]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._loop, name="taskq-finisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: Record, outcome: Outcome | None) -> None:
        """The pool's done callback (thread safe)."""
        self._queue.put((record, outcome))

    def put_many(self, pairs: list[tuple[Record, Outcome | None]]) -> None:
        """A batch's outcomes, kept together in one finish (thread safe)."""
        if pairs:
            self._queue.put(list(pairs))

    def stop(self, timeout: float) -> None:
        """Finish what was put before, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        run_thread("finisher", self._take, self._on_fatal, OutageTooLong)

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        return retrying(what, fn, self.app.settings.outage_timeout)

    def _take(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            batch = list(item) if isinstance(item, list) else [item]
            try:
                while len(batch) < MAX_BATCH:
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        self.finish(batch)
                        return
                    if isinstance(nxt, list):
                        batch.extend(nxt)
                    else:
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
        A retry or dead letter the broker refuses as too large is sent in a smaller form; a retry that
        cannot be sent at all ends the task as a dead letter; when no form can be sent, the FAILURE
        stored says so and the worker moves on (no send is retried forever).
        """
        outcomes = [o for _, o in batch if o is not None]
        plan = flow.after_outcomes(self.app, outcomes)
        if plan:
            flow.settle(self.app, plan, self._deliver, self._retrying)
        final = (Kind.DEAD, Kind.REJECTED)
        success = Kind.SUCCESS
        first: list[ResultRecord] = []  # stored before anything is sent, in outcome order
        others: list[Outcome] = []  # not successes: retries, failures, rejections, revocations
        for o in outcomes:  # one pass: a batch is mostly successes
            if o.kind is success:
                if o.result is not None:
                    first.append(o.result)
                continue
            others.append(o)
            if o.result is not None and o.kind not in final:
                first.append(o.result)
        if first:
            self._store(first)
        held = [o for o in others if self._holds(o)]
        held_ids = {id(o) for o in held}
        follow = [o for o in others if o.kind is not Kind.REVOKED and id(o) not in held_ids]
        failures = [o.result for o in others if o.result is not None and o.kind in final]
        if follow:
            sent = self.sender.send_first([self.forms(o) for o in follow])
            failures += [r for o, index in zip(follow, sent) if (r := self._unsent(o, index)) is not None]
        if failures:
            self._store(failures)
        if outcomes:
            self._on_outcomes(outcomes)
        released = [(r, o) for r, o in batch if id(o) not in held_ids] if held_ids else batch
        self._on_finished([(record, outcome is not None) for record, outcome in released])
        for o in held:  # its key stays held and its offset unfinished until the next attempt's outcome
            assert self._on_hold is not None
            value, headers = self._retry_message(o)
            rec = o.record
            self._on_hold(Record(rec.topic, rec.partition, rec.offset, rec.key, value, headers, rec.timestamp_ms),
                          o.retry_delay)

    def _store(self, records: list[ResultRecord]) -> None:
        """Store results. An outage is waited out for up to ``outage_timeout`` s (commits wait, nothing is
        lost; then OutageTooLong stops the worker); a write the backend
        refuses (:class:`~taskq.errors.BackendRefused`: it answered no) is tried again for
        REFUSED_FOR seconds, then record by record, and a record still refused is logged and left
        unstored so the worker moves on: no write is retried forever."""
        backend = self.app.backend
        deadline = time.monotonic() + REFUSED_FOR
        outage = self.app.settings.outage_timeout
        pause = 0.1
        while True:
            try:
                retrying("store results", lambda: backend.store_many(records), outage, BackendRefused)
                return
            except BackendRefused as exc:
                if time.monotonic() >= deadline:
                    break
                log.warning("the result backend refuses to store %d result(s), retrying in %.1f s: %s",
                            len(records), pause, exc)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        for record in records:
            try:
                retrying("store a result", lambda: backend.store_many([record]), outage, BackendRefused)
            except BackendRefused as exc:
                log.error("result %s of task %s (%s) not stored: the backend refused it for %g s (%s); "
                          "moving on", record.status, record.id, record.task, REFUSED_FOR, exc)

    def _holds(self, outcome: Outcome) -> bool:
        """Whether this retry waits in the worker (a strict-order task, a short enough delay)."""
        if self._on_hold is None or outcome.kind is not Kind.RETRY or outcome.message is None:
            return False
        task = self.app.tasks.get(outcome.message.task)
        return bool(task is not None and task.strict_order
                    and outcome.retry_delay <= self.app.settings.strict_order_max_hold)

    def _retry_message(self, outcome: Outcome) -> tuple[bytes, Headers]:
        """The next attempt's value and headers, in the serializer the message came in."""
        assert outcome.message is not None
        app = self.app
        # re-encode with the serializer the message came in (a pickle task's args may not be JSON)
        content_type = (outcome.record.header(H_CONTENT_TYPE) or b"application/json").decode(errors="replace")
        arrived = app.serializers.by_content_type(content_type) if content_type else None
        serializer = next((n for n in app.settings.accept_content
                           if arrived is not None and app.serializers.get(n) is arrived), "json")
        return outcome.message.encode(app.serializers, serializer)

    def _deliver(self, messages: list[flow.Outgoing]) -> list[flow.Outgoing]:
        """Send canvas follow-ups and wait for their acknowledgement; returns those refused as too large."""
        # making the messages ensures their topics, an admin call: an outage is waited out as for the send
        outgoing: list[Outgoing] = self._retrying("create the topics of canvas follow-ups", lambda: [
            self.app.outgoing(m, topic, partitions, serializer) for m, topic, partitions, serializer in messages])
        sent = self.sender.send_first([[o] for o in outgoing])
        refused = [m for m, index in zip(messages, sent) if index is None]
        for message, topic, *_ in refused:
            log.error("canvas follow-up %s for %s is too large to send; it fails", message.id, topic)
        return refused

    def forms(self, outcome: Outcome) -> list[Outgoing]:
        """What a retry or dead letter may be sent as, fullest first (see :func:`dead_letter_forms`).

        A retry's only form is the retry itself; its dead letter forms follow, should it be refused.
        """
        record = outcome.record
        app = self.app
        forms: list[Outgoing] = []
        if outcome.kind is Kind.RETRY and outcome.message is not None:
            value, headers = self._retry_message(outcome)
            headers.append((H_ORIGIN, record.topic.encode()))
            forms.append((app.delay_topic(outcome.retry_delay), record.key, value, headers))
        reason = Kind.DEAD.value if outcome.kind is Kind.RETRY else outcome.kind.value
        # record.topic, not the origin-topic header: the worker consumes task topics only, and a header
        # naming a topic without a dead-letter topic would block the finisher forever
        dlq = app.dlq_topic(record.topic)
        forms += [(dlq, key, value, headers) for key, value, headers in dead_letter_forms(
            record, reason, outcome.error_type, outcome.error_message, outcome.error_traceback, self.worker_name)]
        return forms

    def _unsent(self, outcome: Outcome, index: int | None) -> ResultRecord | None:
        """The FAILURE to store for a follow-up sent in a lesser form than planned (or not at all)."""
        record = outcome.record
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if index is None:
            log.error("%s: no form of its %s message could be sent (too large); storing the failure and "
                      "moving on", where, outcome.kind.value)
        if outcome.kind is Kind.RETRY and index != 0:
            state = outcome.result
            if state is None:
                return None
            note = "its retry was too large to send; dead-lettered" if index is not None else \
                "its retry and its dead letter were too large to send"
            return ResultRecord(state.id, FAILURE, None, f"{state.error} ({note})", state.traceback, state.task,
                                state.worker, state.attempts, time.time(), state.meta)
        if index is None and outcome.result is not None:
            outcome.result.error = f"{outcome.result.error} (its dead letter was too large to send)"
            outcome.result.encoded = None
        return None
