"""Task and worker events: the events hook and the one owner of the event format (schema v3).

Events are compact JSON on ``app.events_topic`` (``<topic_prefix>events``). A worker event is one
object keyed by the worker name. Task events go in batches: one object per events-topic partition
and publishing round, ``{"v": 3, "worker": ..., "fields": [...], "rows": [[...], ...]}``, each row one
event's values in the order of ``fields`` (:data:`TASK_FIELDS`), optionally followed by a dict of the
event's extra fields. A batch goes to the partition :func:`event_partition` gives its events' root
task id, so a workflow's events stay in order in one partition. :func:`decode_all` turns any record
value (v1 objects, v2 objects and arrays, v3 batches) into event dicts. The README's "Events"
section documents the fields.

The hook methods run on the worker's threads and only append to a queue; a publisher thread turns
the queue into events and produces them on the worker's idempotent producer, so a task never waits
for its event. The worker commits finished records' offsets only once the broker has acknowledged
their events (:meth:`EventsHook.hold`, bounded by ``ACK_BOUND``). ``close()`` (at worker stop)
publishes what is queued and flushes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from taskq.brokers.base import Producer, Record
from taskq.delivery import DeliveryGate
from taskq.errors import TopicMissing
from taskq.execution import Kind, Outcome
from taskq.hooks import Hook, WorkerInfo
from taskq.message import H_ATTEMPTS, H_ID, H_PARENT_ID, H_ROOT_ID, H_TASK
from taskq.results.base import ResultRecord
from taskq.serialization import JSON, json_dumps_str_keys

if TYPE_CHECKING:
    from taskq.app import Taskq

log = logging.getLogger("taskq.events")
T = TypeVar("T")

VERSION = 3
#: schema versions this module decodes (v1: one object per record value; v2: an object or an array;
#: v3: worker objects and task batches)
READABLE_VERSIONS = frozenset({1, 2, 3})
#: a batch value is cut before it grows past this many bytes (well under message.max.bytes)
MAX_ARRAY_BYTES = 256 * 1024
#: the columns of a task event row in a v3 batch, in order; new ones are only ever appended
TASK_FIELDS = ("type", "ts", "id", "root_id", "parent_id", "task", "key", "topic", "partition", "offset", "attempt",
               "sent", "received", "started", "finished", "runtime", "exc_type", "exc_message")
_TYPE, _ROOT, _FINISHED_AT, _EXC_TYPE, _EXC_MESSAGE = (TASK_FIELDS.index(f) for f in
                                                       ("type", "root_id", "finished", "exc_type", "exc_message"))
TASK_SENT = "task-sent"
TASK_RECEIVED = "task-received"
TASK_STARTED = "task-started"
TASK_SUCCEEDED = "task-succeeded"
TASK_RETRIED = "task-retried"
TASK_FAILED = "task-failed"
TASK_DEAD = "task-dead"
TASK_REJECTED = "task-rejected"
TASK_SKIPPED = "task-skipped"
TASK_REVOKED = "task-revoked"
WORKER_ONLINE = "worker-online"
WORKER_HEARTBEAT = "worker-heartbeat"
WORKER_OFFLINE = "worker-offline"
TASK_TYPES = (TASK_SENT, TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED, TASK_RETRIED, TASK_FAILED, TASK_DEAD,
              TASK_REJECTED, TASK_SKIPPED, TASK_REVOKED)
WORKER_TYPES = (WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE)
#: a task's last event: nothing more happens to that task id after it (task-dead follows task-failed)
FINAL_TYPES = frozenset({TASK_SUCCEEDED, TASK_FAILED, TASK_DEAD, TASK_REJECTED, TASK_SKIPPED, TASK_REVOKED})
#: event type -> the result state it stands for (task-dead is a FAILURE)
STATES = {TASK_SENT: "PENDING", TASK_RECEIVED: "RECEIVED", TASK_STARTED: "STARTED", TASK_SUCCEEDED: "SUCCESS",
          TASK_RETRIED: "RETRY", TASK_FAILED: "FAILURE", TASK_DEAD: "FAILURE", TASK_REJECTED: "REJECTED",
          TASK_SKIPPED: "SKIPPED", TASK_REVOKED: "REVOKED"}
HEARTBEAT_INTERVAL = 2.0
_OUTCOME_TYPES = {Kind.SUCCESS: TASK_SUCCEEDED, Kind.RETRY: TASK_RETRIED, Kind.DEAD: TASK_FAILED,
                  Kind.REJECTED: TASK_REJECTED, Kind.REVOKED: TASK_REVOKED}

# queue items: (what, when, payload)
_RECEIVED, _FINISHED, _SKIPPED, _ABANDONED, _WORKER, _HOLD = range(6)
#: seconds a hold waits for its events' acknowledgement before the offsets are committed anyway
ACK_BOUND = 5.0
#: seconds between attempts to create again an events topic deleted under the worker
RECREATE_EVERY = 10.0


def task_row(record: Record, kind: str, ts: float, received: float | None = None, started: float | None = None,
             finished: float | None = None, runtime: float | None = None) -> list[Any]:
    """A task event of this record as a row of :data:`TASK_FIELDS` (the exception fields unset), built
    as one list display: the hot path of every event."""
    raw_id = root = parent = name = None
    attempts = b"0"
    for header, value in record.headers:  # one pass; the last value of a header wins
        if header == H_ID:
            raw_id = value
        elif header == H_ROOT_ID:
            root = value
        elif header == H_PARENT_ID:
            parent = value
        elif header == H_TASK:
            name = value
        elif header == H_ATTEMPTS:
            attempts = value
    task_id = raw_id.decode(errors="replace") if raw_id is not None else None
    try:
        attempt: int | None = int(attempts) + 1
    except (TypeError, ValueError):
        attempt = None
    return _row(kind, ts, task_id, root.decode(errors="replace") if root is not None else task_id,
                parent.decode(errors="replace") if parent is not None else None,
                name.decode(errors="replace") if name is not None else None,
                record, attempt, received, started, finished, runtime)


def _without_payload(event: list[Any]) -> list[Any]:
    """``event`` without the arguments and result that ``events_include_args`` adds (``event`` itself if it has
    none): a task with large ones still gets its events, which would be over the broker's size limit."""
    extra = event[-1] if len(event) > len(TASK_FIELDS) and isinstance(event[-1], dict) else None
    if not extra or not {"args", "kwargs", "result"} & extra.keys():
        return event
    kept = {k: v for k, v in extra.items() if k not in ("args", "kwargs", "result")}
    return event[:len(TASK_FIELDS)] + ([kept] if kept else [])


def _row(kind: str, ts: float, task_id: str | None, root: str | None, parent: str | None, name: str | None,
         record: Record, attempt: int | None, received: float | None, started: float | None,
         finished: float | None, runtime: float | None) -> list[Any]:
    """The one place a task event is laid out in :data:`TASK_FIELDS` order (the exception fields unset)."""
    key, sent = record.key, record.timestamp_ms
    return [kind, ts, task_id, root, parent, name, key.decode(errors="replace") if key is not None else None,
            record.topic, record.partition, record.offset, attempt, sent / 1000.0 if sent > 0 else None,
            received, started, finished, runtime, None, None]


def task_batch(worker: str, rows: Sequence[list[Any]]) -> dict[str, Any]:
    """The v3 value carrying task event rows of one worker."""
    return {"v": VERSION, "worker": worker, "fields": TASK_FIELDS, "rows": rows}


def worker_event(kind: str, info: WorkerInfo, ts: float) -> dict[str, Any]:
    """A worker-online/heartbeat/offline event."""
    return {"v": VERSION, "type": kind, "ts": ts, "worker": info.name, "hostname": info.hostname, "pid": info.pid,
            "pool": info.pool, "concurrency": info.concurrency, "group": info.group, "active": info.active,
            "processed": info.processed, "partitions": [list(tp) for tp in info.partitions], "freq": info.freq}


_dumps = JSON.dumps


def _valid(event: Any) -> bool:
    return isinstance(event, dict) and event.get("v") in READABLE_VERSIONS and "type" in event


def _expand(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a v3 batch as dicts (a malformed batch or row is left out)."""
    fields, rows = batch.get("fields"), batch.get("rows")
    if not isinstance(fields, list) or not isinstance(rows, list) or "type" not in fields:
        return []
    head = {"v": batch["v"], "worker": batch.get("worker")}
    width = len(fields)
    events = []
    for row in rows:
        if not isinstance(row, list) or len(row) < width:
            continue
        event = {**head, **dict(zip(fields, row))}
        if len(row) > width and isinstance(row[width], dict):
            event.update(row[width])
        events.append(event)
    return events


def decode_all(data: bytes | None) -> list[dict[str, Any]]:
    """The events of a record value, in order: a v3 batch, one event object or an array of them (v1
    to v3). What is not an event (junk, a newer schema) is left out, so the list may be empty."""
    if not data:
        return []
    try:
        value = JSON.loads(data)
    except ValueError:
        return []
    if isinstance(value, list):
        return [e for e in value if _valid(e)]
    if isinstance(value, dict) and "rows" in value:
        return _expand(value) if value.get("v") in READABLE_VERSIONS else []
    return [value] if _valid(value) else []


def event_partition(root: bytes, partitions: int) -> int:
    """The events-topic partition of a root task id's events: CRC-32 (in C, a fifth of the cost of a
    pure-Python murmur2) modulo the partition count; every worker maps one root to one partition."""
    return zlib.crc32(root) % partitions


def hostname_pid() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


class EventsHook(Hook):
    """Publishes task state changes and worker heartbeats on the worker's producer.

    Coalescing (``events_coalesce`` seconds, default 1.0): a task's received and started events are
    published once they are that old and the task has not moved on; a task that moves on sooner is
    told by its next event alone, which carries every time so far (``received``, ``started``). A final
    event is never held back. With 0 every state change is its own event.

    :meth:`hold` lets the worker commit a record's offset only once its events are acknowledged.
    """

    def __init__(self, app: Taskq, producer: Producer, worker: str,
                 recreate: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.topic = app.events_topic
        self._recreate = recreate  # creates the events topic again when it was deleted under the worker
        self._next_recreate = 0.0
        self.include_args = app.settings.events_include_args
        # without arguments and results every key is a string: the faster encoder
        self._encode = JSON.dumps if self.include_args else json_dumps_str_keys
        self.coalesce = max(0.0, app.settings.events_coalesce)
        self.serializers = app.serializers
        self.worker = worker
        self._producer = producer
        self._send_raw = producer.send
        self._queue: deque[tuple[int, float, Any]] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # per record, keyed (topic, partition, offset): when received (set by the publisher), when
        # started (set by the pool thread: a dict store is its whole cost; never iterated), and which of
        # the two were published as events of their own; received batches by coalesce deadline, and the
        # records past it that are not final yet (looked at again each round)
        self._received: dict[tuple[str, int, int], float] = {}
        self._started: dict[tuple[str, int, int], float] = {}
        self._told: set[tuple[str, int, int]] = set()  # received published
        self._told_started: set[tuple[str, int, int]] = set()
        self._due: deque[tuple[float, list[tuple[str, int, int]], Sequence[Record]]] = deque()
        self._waiting: list[tuple[tuple[str, int, int], Record]] = []
        self.failed = 0  # events that could not be queued or delivered (logged once)
        self._failure_logged = False
        self.published = 0  # events queued on the producer
        self._ended = False  # the events thread has ended: holds are released at once
        self._gate = DeliveryGate(ACK_BOUND, self._failed)
        # task events of this publishing round per events-topic partition, in order; 0 partitions
        # (count unknown): each event is its own keyed message. Read by the events thread: the worker's
        # topic check may still be running, and asking the broker here held the start-up ~15 ms.
        self._partitions = 0
        self._pending: dict[int, list[list[Any]]] = {}
        self._thread = threading.Thread(target=self._run, name="taskq-events", daemon=True)
        self._thread.start()

    # -- hook methods: called on worker threads, only queue (``finished`` also publishes) ----------

    def received(self, records: Sequence[Record], now: float) -> None:
        self._queue.append((_RECEIVED, now, records))

    def started(self, record: Record) -> None:
        self._started[(record.topic, record.partition, record.offset)] = time.time()

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        self._queue.append((_FINISHED, time.time(), outcomes))
        self._wake.set()

    def skipped(self, records: Sequence[Record], results: Sequence[ResultRecord | None]) -> None:
        self._queue.append((_SKIPPED, time.time(), (records, results)))

    def abandoned(self, records: Sequence[Record]) -> None:
        self._queue.append((_ABANDONED, time.time(), records))

    def worker_online(self, worker: WorkerInfo) -> None:
        self._queue.append((_WORKER, time.time(), (WORKER_ONLINE, worker)))
        self._wake.set()

    def worker_heartbeat(self, worker: WorkerInfo) -> None:
        self._queue.append((_WORKER, time.time(), (WORKER_HEARTBEAT, worker)))
        self._wake.set()

    def worker_offline(self, worker: WorkerInfo) -> None:
        self._queue.append((_WORKER, time.time(), (WORKER_OFFLINE, worker)))
        self._wake.set()

    def hold(self, items: T, release: Callable[[T], None]) -> None:
        """Call ``release(items)`` once every task event queued before this call is acknowledged by the
        broker, or after ``ACK_BOUND`` s (logged once). The worker passes its finished records here
        before committing their offsets, so a crash right after a commit loses none of their events."""
        self._queue.append((_HOLD, 0.0, (items, release)))
        self._wake.set()
        if self._ended:  # the events thread is gone: nothing publishes them, no commit may wait
            self._release_queued()

    # -- publishing ---------------------------------------------------------------------------------

    def close(self, timeout: float) -> int:
        """Publish everything queued and wait for the producer to deliver it; returns what is left."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        left = self._producer.flush(timeout)
        self._gate.release_all()
        return left

    def _run(self) -> None:
        try:
            self._partitions = self._partition_count(self.app)
            self._publish_until_stopped()
        finally:
            self._ended = True
            self._release_queued()

    def _release_queued(self) -> None:
        """Release every hold, queued or waiting (the events thread has ended)."""
        with self._lock:
            holds = [payload for what, _, payload in self._take_queue() if what == _HOLD]
        for items, release in holds:
            release(items)
        self._gate.release_all()

    def _take_queue(self) -> list[tuple[int, float, Any]]:
        queue, taken = self._queue, []
        while queue:
            taken.append(queue.popleft())
        return taken

    def _publish_until_stopped(self) -> None:
        tick = min(0.05, self.coalesce / 2) if self.coalesce else 0.05
        while True:
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._drain()
                if stopping:
                    self._drain()  # what was queued while the last drain ran
                    return
                self._serve(tick)
            except Exception:  # a bad record must not end the events of the worker
                log.exception("publishing task events failed; continuing")
                if stopping:
                    return
                self._wake.wait(tick)

    def _serve(self, tick: float) -> None:
        """Release overdue holds; serve delivery reports while holds wait; sleep out the tick."""
        gate = self._gate
        now = time.monotonic()
        gate.expire(now)
        deadline = now + tick
        # while holds wait, serve delivery reports as they come (the embedded broker's poll never blocks)
        while gate.waiting and not self._wake.is_set() and (left := deadline - time.monotonic()) > 0:
            if not self._producer.poll(left):
                break
        self._wake.wait(max(0.0, deadline - time.monotonic()))

    def _drain(self) -> None:
        with self._lock:  # one publisher at a time keeps the queue's order on the producer
            self._gate.open()
            try:
                self._drain_locked()
                self._publish_due(time.time())
            finally:
                try:
                    self._send_pending()
                finally:
                    self._gate.close()
        self._producer.poll(0)

    def _partition_count(self, app: Taskq) -> int:
        try:
            return app.broker.partition_count(self.topic)
        except Exception as exc:  # noqa: BLE001 - then every event goes as its own keyed message
            log.warning("events topic %s: partition count unknown (%s); one message per event", self.topic, exc)
            return 0

    def _drain_locked(self) -> None:
        queue, received, coalesce = self._queue, self._received, self.coalesce
        while queue:
            what, now, payload = queue.popleft()
            if what == _FINISHED:
                self._finish_all(payload, now)
            elif what == _RECEIVED:
                keys = [(r.topic, r.partition, r.offset) for r in payload]
                received.update(dict.fromkeys(keys, now))
                self._due.append((now + coalesce, keys, payload))
                if not coalesce:
                    self._publish_due(now)
            elif what == _HOLD:
                items, release = payload
                self._gate.hold(items, release, time.monotonic())
            elif what == _SKIPPED:
                for record, result in zip(*payload):
                    # the final state stored by the run that finished it; None: a second copy of a
                    # follow-up task still running here
                    event = self._task_event(TASK_SKIPPED, now, record, forget=True,
                                             state=result.status if result is not None else None)
                    event[_FINISHED_AT] = (result.date_done if result is not None else None) or now
                    self._produce(event)
            elif what == _ABANDONED:
                for record in payload:  # redelivered later (maybe elsewhere): its next run has events
                    self._forget((record.topic, record.partition, record.offset))
            elif what == _WORKER:
                kind, info = payload
                self._send(info.name.encode(), _dumps(worker_event(kind, info, now)))

    def _publish_due(self, now: float) -> None:
        """Received and started events ``coalesce`` old whose task has not moved on since: records
        past their received deadline and not final wait in ``_waiting`` until started that long ago."""
        due, received, waiting = self._due, self._received, self._waiting
        while due and due[0][0] <= now:
            _, keys, records = due.popleft()
            waiting += [(key, record) for key, record in zip(keys, records) if key in received]
        if waiting:
            horizon = now - self.coalesce
            self._waiting = [(key, record) for key, record in waiting if self._tell(key, record, now, horizon)]

    def _tell(self, key: tuple[str, int, int], record: Record, now: float, horizon: float) -> bool:
        """Publish the received or started event a waiting record is due; whether it still waits."""
        if key not in self._received:  # final meanwhile
            return False
        at = self._started.get(key)
        if key not in self._told and (at is None or not self.coalesce):  # else told by its started event
            self._told.add(key)
            self._produce(self._task_event(TASK_RECEIVED, now, record))
        if at is None or at > horizon:
            return True
        self._told_started.add(key)
        self._produce(self._task_event(TASK_STARTED, now, record))
        return False

    def _forget(self, key: tuple[str, int, int]) -> tuple[float | None, float | None]:
        """(received, started) times of a record that moves on for good; its state here is dropped."""
        if self._told:
            self._told.discard(key)
        if self._told_started:
            self._told_started.discard(key)
        return self._received.pop(key, None), self._started.pop(key, None)

    def _finish_all(self, outcomes: Sequence[Outcome], now: float) -> None:
        """The final events of finished records. A plain success, the hot path, is built here from its
        result record (which holds the ids, name and attempt already decoded); any other outcome, or
        any outcome while ``events_coalesce`` is 0, ``events_include_args`` is on or the partition
        count is unknown, by :meth:`_finished`."""
        general = self._finished
        if not self.coalesce or self.include_args or not self._partitions:
            for outcome in outcomes:
                general(outcome, now)
            return
        forget, produce, success = self._forget, self._produce, Kind.SUCCESS
        for outcome in outcomes:
            result = outcome.result
            if outcome.kind is not success or result is None or not result.date_done:
                general(outcome, now)
                continue
            record = outcome.record
            received, started = forget((record.topic, record.partition, record.offset))
            finished, runtime, task_id = result.date_done, outcome.runtime, result.id
            produce(_row(TASK_SUCCEEDED, now, task_id, result.root_id or task_id, result.parent_id, result.task,
                         record, result.attempts, received, finished - runtime if started is None else started,
                         finished, runtime))

    def _finished(self, outcome: Outcome, now: float) -> None:
        record = outcome.record
        kind = outcome.kind
        if not self.coalesce:
            key = (record.topic, record.partition, record.offset)
            at = self._started.get(key)
            if at is not None and key not in self._told_started:
                self._produce(self._task_event(TASK_STARTED, at, record))
        success = kind is Kind.SUCCESS  # identity tests: an Enum's hash is a Python call
        received, started = self._forget((record.topic, record.partition, record.offset))
        result = outcome.result
        finished = result.date_done if result is not None and result.date_done else now
        runtime = None
        if success or kind is Kind.RETRY or kind is Kind.DEAD:  # the task body ran
            runtime = outcome.runtime
            if started is None:  # its start was not seen here
                started = finished - runtime
        event = task_row(record, TASK_SUCCEEDED if success else _OUTCOME_TYPES[kind], now, received, started,
                         finished, runtime)
        extra: dict[str, Any] = {}
        if self.include_args:
            extra["args"], extra["kwargs"] = self._arguments(record)
        if not success:
            event[_EXC_TYPE] = outcome.error_type or None
            event[_EXC_MESSAGE] = (outcome.error_message or "")[:1024] or None
            if kind is Kind.RETRY:
                extra["retry_in"] = outcome.retry_delay
        elif self.include_args and result is not None:
            extra["result"] = result.result
        if extra:
            event.append(extra)
        self._produce(event)
        if kind is Kind.DEAD:
            dead = list(event)
            dead[_TYPE] = TASK_DEAD
            self._produce(dead)

    def _task_event(self, kind: str, now: float, record: Record, forget: bool = False, **extra: Any) -> list[Any]:
        key = (record.topic, record.partition, record.offset)
        if forget:
            received, started = self._forget(key)
        else:
            received, started = self._received.get(key), self._started.get(key)
        event = task_row(record, kind, now, received, started)
        if self.include_args:
            extra["args"], extra["kwargs"] = self._arguments(record)
        if extra:
            event.append(extra)
        return event

    def _arguments(self, record: Record) -> tuple[Any, Any]:
        content_type = (record.header("content-type") or b"application/json").decode(errors="replace")
        try:
            args, kwargs = self.serializers.loads(record.value or b"", content_type)
            _dumps([args, kwargs])  # pickled arguments may not be JSON: leave them out
            return args, kwargs
        except Exception:  # noqa: BLE001 - undecodable arguments are not an event error
            return None, None

    def _produce(self, event: list[Any]) -> None:
        """Add a task event row to this round's batch of its partition (sent at the round's end)."""
        root = event[_ROOT]
        if not self._partitions or root is None:
            self._send_events(None, [event])
            return
        partition = event_partition(root.encode(), self._partitions)
        pending = self._pending.get(partition)
        if pending is None:
            self._pending[partition] = [event]
        else:
            pending.append(event)

    def _send_pending(self) -> None:
        """One message per partition for the task events of this round: a batch of their rows in order
        (halved until under ``MAX_ARRAY_BYTES``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for partition, events in pending.items():
            self._send_events(partition, events)

    def _send_events(self, partition: int | None, events: list[list[Any]]) -> None:
        """One batch message keyed by the first event's root id, acknowledged through the delivery gate."""
        try:
            value = self._encode(task_batch(self.worker, events))
        except Exception as exc:  # noqa: BLE001 - an event that cannot be encoded never affects a task
            self._failed(len(events), exc)
            return
        if len(value) > MAX_ARRAY_BYTES and len(events) > 1:
            half = len(events) // 2
            self._send_events(partition, events[:half])
            self._send_events(partition, events[half:])
            return
        if len(value) > MAX_ARRAY_BYTES:  # one event: large arguments or result are left out, the event is sent
            slim = _without_payload(events[0])
            if slim is not events[0]:
                self._send_events(partition, [slim])
                return
        root = events[0][_ROOT]
        report = self._gate.count(len(events))
        try:
            self._producer.produce(self.topic, root.encode() if root else None, value, on_delivery=report,
                                   partition=partition)
            self.published += len(events)
        except Exception as exc:  # noqa: BLE001 - an event that cannot be queued never affects a task
            report(exc, None)
            self._topic_gone(exc)

    def _send(self, key: bytes | None, value: bytes) -> None:
        """Queue a worker event: no delivery report (nothing waits for it); the idempotent producer
        retries it until its message timeout, like any message."""
        try:
            self._send_raw(self.topic, key, value)
            self.published += 1
        except Exception as exc:  # noqa: BLE001 - an event that cannot be queued never affects a task
            self._failed(1, exc)
            self._topic_gone(exc)

    def _topic_gone(self, exc: Exception) -> None:
        """The events topic was deleted while the worker runs: create it again (at most every
        ``RECREATE_EVERY`` s), as the worker does for its dead-letter and delay-tier topics; the events
        that failed meanwhile are counted in ``failed``."""
        now = time.monotonic()
        if not isinstance(exc, TopicMissing) or self._recreate is None or now < self._next_recreate:
            return
        self._next_recreate = now + RECREATE_EVERY
        try:
            self._recreate(self.topic)
            self._partitions = self._partition_count(self.app)
            log.warning("events topic %s was deleted; created it again", self.topic)
        except Exception as error:  # noqa: BLE001 - tried again with a later event
            log.warning("cannot create the events topic %s again: %s", self.topic, error)

    def _failed(self, count: int, exc: Exception) -> None:
        self.failed += count
        if not self._failure_logged:
            self._failure_logged = True
            log.error("cannot publish a task event on %s: %s (further failures are counted, not logged)",
                      self.topic, exc)
