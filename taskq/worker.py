"""The worker: consume, execute, make outcomes durable, commit.

Threads and what they own:
- the consumer thread (``run``) owns the group consumer and the offset bookkeeping;
- the pool runs records and hands back outcomes;
- the finisher stores results (one pipelined write per batch), sends retries and dead letters and
  waits for their acknowledgement, then reports the offsets finished;
- the forwarder moves delayed messages from the delay tiers back to their task topics when due.
An offset is committed only when it and every offset before it in its partition are finished.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from taskq.app import Taskq
from taskq.brokers.base import Consumer, Headers, Producer, Record, TopicPartition
from taskq.errors import BackendError, BrokerError, NotRegistered
from taskq.execution import Kind, Outcome
from taskq.message import H_CONTENT_TYPE, H_ETA, H_ORIGIN
from taskq.pools import make_pool
from taskq.task import Task

log = logging.getLogger("taskq.worker")
T = TypeVar("T")
Outgoing = tuple[str, bytes | None, bytes | None, Headers]
PAUSE_AFTER = 10.0  # seconds with prefetch full before partitions are paused
COMMIT_INTERVAL = 0.2  # seconds between asynchronous commits of finished work
PERMANENT_PRODUCE_ERRORS = ("MSG_SIZE_TOO_LARGE", "too large")


def _permanent(exc: Exception) -> bool:
    """True for produce errors that no retry can mend."""
    return any(marker in str(exc) for marker in PERMANENT_PRODUCE_ERRORS)


@dataclass
class WorkerStats:
    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    rejected: int = 0
    skipped: int = 0  # redelivered with a final result already stored
    abandoned: int = 0  # not started before stop or revoke; left uncommitted for redelivery
    forwarded: int = 0  # delayed messages moved back to their task topic
    by_kind: dict[str, int] = field(default_factory=dict)


class OffsetTracker:
    """Per partition, the offsets taken in order; the commit point is the first unfinished one."""

    def __init__(self) -> None:
        self._taken: dict[TopicPartition, deque[int]] = {}
        self._finished: dict[TopicPartition, set[int]] = {}
        self._commit_point: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._abandoned: dict[TopicPartition, int] = {}  # taken, will not run here: never finished

    def take(self, tp: TopicPartition, offset: int) -> None:
        self._taken.setdefault(tp, deque()).append(offset)
        self._finished.setdefault(tp, set())

    def finish(self, tp: TopicPartition, offset: int) -> None:
        finished = self._finished.get(tp)
        if finished is None:  # the partition was revoked meanwhile
            return
        finished.add(offset)
        taken = self._taken[tp]
        while taken and taken[0] in finished:
            done = taken.popleft()
            finished.discard(done)
            self._commit_point[tp] = done + 1

    def to_commit(self, partitions: Iterable[TopicPartition] | None = None, every: bool = False,
                  ) -> dict[TopicPartition, int]:
        """Commit points that moved since the last call (``every``: all of them), for ``partitions`` or all.

        ``every`` is for the synchronous commits at revoke and stop, which must land even if an earlier
        asynchronous commit of the same point was lost.
        """
        tps = self._commit_point.keys() if partitions is None else [p for p in partitions if p in self._commit_point]
        moved = {tp: self._commit_point[tp] for tp in tps
                 if every or self._committed.get(tp) != self._commit_point[tp]}
        self._committed.update(moved)
        return moved

    def abandon(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` will not run here (stopping or revoked): it stays uncommitted, but is not waited for."""
        if tp in self._taken:
            self._abandoned[tp] = self._abandoned.get(tp, 0) + 1

    def unfinished(self, partitions: Iterable[TopicPartition]) -> int:
        """Records of these partitions taken and neither finished nor abandoned."""
        return sum(len(self._taken.get(tp, ())) - len(self._finished.get(tp, ())) - self._abandoned.get(tp, 0)
                   for tp in partitions)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            for table in (self._taken, self._finished, self._commit_point, self._committed, self._abandoned):
                table.pop(tp, None)


class KeyedDispatcher:
    """Sends records to the pool so that records with one key run one at a time, in offset order."""

    def __init__(self, submit: Callable[[Record], None]) -> None:
        self._submit = submit
        self._waiting: dict[tuple[str, int, bytes | None], deque[Record]] = {}
        self._lock = threading.Lock()

    def dispatch(self, record: Record) -> None:
        key = (record.topic, record.partition, record.key)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.append(record)
                return
            self._waiting[key] = deque()
        self._submit(record)

    def release(self, record: Record) -> None:
        """``record`` finished: start the next record of its key, if any."""
        key = (record.topic, record.partition, record.key)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                return
            if not waiting:
                del self._waiting[key]
                return
            following = waiting.popleft()
        self._submit(following)

    def drop(self, partitions: set[TopicPartition] | None = None) -> list[Record]:
        """Forget records not yet started (of ``partitions``, or all); returns them."""
        dropped: list[Record] = []
        with self._lock:
            for key, waiting in self._waiting.items():
                if partitions is None or (key[0], key[1]) in partitions:
                    dropped.extend(waiting)
                    waiting.clear()
        return dropped


class Worker:
    """Consumes task topics in the app's consumer group and runs their tasks.

    ``concurrency`` tasks run at once (for ``asyncio``: coroutines in flight); ``prefetch`` bounds the
    records taken but not finished.
    """

    def __init__(
        self,
        app: Taskq,
        tasks: Iterable[str] | None = None,
        concurrency: int = 8,
        pool: str = "threads",
        batch_size: int = 1000,
        prefetch: int | None = None,
        name: str | None = None,
        app_path: str | None = None,
        stop_timeout: float = 30.0,
        forward_delayed: bool = True,
    ) -> None:
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        selected = list(tasks) if tasks else list(app.tasks)
        self.tasks = [app.tasks[t] if t in app.tasks else _task_by_topic(app, t) for t in selected]
        self.topics = [t.topic for t in self.tasks]
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.prefetch = prefetch or max(batch_size * 4, concurrency * 4)
        self.stop_timeout = stop_timeout
        self.forward_delayed = forward_delayed
        self.stats = WorkerStats()
        self.pool = make_pool(pool, app, concurrency, self.name, app_path)
        self._stopping = threading.Event()
        self._outcomes: queue.SimpleQueue[tuple[Record, Outcome | None] | None] = queue.SimpleQueue()
        self._finished: deque[tuple[Record, bool]] = deque()  # (record, offset may be committed)
        self._finished_event = threading.Event()
        self._offsets = OffsetTracker()
        self._revoked: set[TopicPartition] = set()
        self._in_flight = 0
        self._dispatcher = KeyedDispatcher(self.pool.submit)
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._known_topics: set[str] = set()
        self._last_commit = 0.0
        self.ready = threading.Event()  # set once the consumer has joined the group

    # -- lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching, finish what is running, commit, leave the group (safe from any thread)."""
        self._stopping.set()

    def run(self) -> WorkerStats:
        """Work until :meth:`stop`; returns the counters."""
        if not self.topics:
            raise BrokerError("no tasks to consume: register tasks or name them with -Q")
        app = self.app
        partitions = {t.topic: t.partitions for t in self.tasks}
        app.ensure_topics({**partitions, **{app.dlq_topic(t): n for t, n in partitions.items()}})
        app.ensure_topics({t: app.settings.default_partitions for t in app.delay_topics})
        app.backend  # noqa: B018 - fail fast on a bad backend URL
        self._producer = app.broker.producer(**app.settings.producer_options)
        self.pool.start(self._on_done, self._runnable)
        finisher = threading.Thread(target=self._finish_loop, name="taskq-finisher", daemon=True)
        finisher.start()
        forwarder = None
        if self.forward_delayed:
            forwarder = threading.Thread(target=self._forward_loop, name="taskq-forwarder", daemon=True)
            forwarder.start()
        consumer = self._consumer = app.broker.consumer(app.group, self.topics, self._on_assign, self._on_revoke,
                                                        **app.settings.consumer_options)
        log.info("worker %s consuming %s in group %s", self.name, self.topics, app.group)
        try:
            self._consume_loop(consumer)
            self._shutdown(consumer)
        finally:
            self._stopping.set()
            consumer.close()
            self._outcomes.put(None)
            finisher.join(timeout=self.stop_timeout)
            if forwarder is not None:
                forwarder.join(timeout=self.stop_timeout)
            self._producer.flush(app.settings.send_timeout)
        return self.stats

    def _consume_loop(self, consumer: Consumer) -> None:
        paused: list[TopicPartition] = []
        full_since = 0.0
        while not self._stopping.is_set():
            self._take_finished()
            self._commit(consumer)
            if self._in_flight >= self.prefetch:
                # Wait for work to finish rather than pausing: a pause drops the client's prefetched
                # records. Only when full for long (slow tasks) pause, to keep polling the group.
                full_since = full_since or time.monotonic()
                if not paused and time.monotonic() - full_since < PAUSE_AFTER:
                    self._finished_event.wait(0.05)
                    self._finished_event.clear()
                    continue
                if not paused:
                    paused = consumer.assignment()
                    consumer.pause(paused)
            else:
                full_since = 0.0
                if paused:
                    consumer.resume(paused)
                    paused = []
            records = consumer.consume(self.batch_size, 0.02 if self._in_flight else 0.1)
            self.ready.set()
            if records:
                self._accept(records)

    def _shutdown(self, consumer: Consumer) -> None:
        dropped = self._dispatcher.drop()
        self.stats.abandoned += len(dropped)
        self._in_flight -= len(dropped)
        for record in dropped:
            self._offsets.abandon((record.topic, record.partition), record.offset)
        self._wait_finished(lambda: self._in_flight <= 0, self.stop_timeout)
        self._commit_on_stop(consumer)
        self.pool.stop()
        self._take_finished()
        self._commit_on_stop(consumer)

    def _commit_on_stop(self, consumer: Consumer) -> None:
        """The final commit; refused during a rebalance (stale generation), the next owner re-reads."""
        try:
            self._commit(consumer, sync=True)
        except BrokerError as exc:
            log.warning("commit on stop failed (the next owner re-reads those records): %s", exc)

    # -- consumer thread --------------------------------------------------------------------------

    def _accept(self, records: list[Record]) -> None:
        self.stats.received += len(records)
        skip = self._already_final(records) if self.app.settings.skip_finished else {}
        for record in records:
            self._offsets.take((record.topic, record.partition), record.offset)
            self._in_flight += 1
            if record.offset in skip.get((record.topic, record.partition), ()):
                self.stats.skipped += 1
                self._finished.append((record, True))
            else:
                self._dispatcher.dispatch(record)

    def _already_final(self, records: list[Record]) -> dict[TopicPartition, set[int]]:
        """Offsets of records whose task already has a final result (redeliveries after a crash)."""
        with_id = [(r, i.decode(errors="replace")) for r in records if (i := r.header("id"))]
        ids = [task_id for _, task_id in with_id]
        backend = self.app.backend
        if not self._retrying("check results", lambda: backend.any_stored(ids)):
            return {}
        stored = self._retrying("check results", lambda: backend.get_many(ids))
        final: dict[TopicPartition, set[int]] = {}
        for (record, _), result in zip(with_id, stored):
            if result is not None and result.ready:
                final.setdefault((record.topic, record.partition), set()).add(record.offset)
        return final

    def _take_finished(self) -> None:
        finished = self._finished
        while finished:
            record, done = finished.popleft()
            self._in_flight -= 1
            if done:
                self._offsets.finish((record.topic, record.partition), record.offset)
            else:
                self._offsets.abandon((record.topic, record.partition), record.offset)

    def _commit(self, consumer: Consumer, sync: bool = False, partitions: Iterable[TopicPartition] | None = None,
                ) -> None:
        """Commit finished work: asynchronously at most every COMMIT_INTERVAL, or now and synchronously.

        One commit per loop at a low message rate would be a request per message, and the client's
        commit queue then falls behind (lag grows although every task is done).
        """
        now = time.monotonic()
        if not sync and now - self._last_commit < COMMIT_INTERVAL:
            return
        self._last_commit = now
        offsets = self._offsets.to_commit(partitions, every=sync)
        if offsets:
            consumer.commit(offsets, asynchronous=not sync)

    def _wait_finished(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._take_finished()
            if condition():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._finished_event.wait(min(left, 0.05))
            self._finished_event.clear()

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self._revoked.difference_update(partitions)
        log.info("worker %s assigned %s", self.name, partitions)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Finish (or abandon) in-flight work of these partitions and commit exactly what is done."""
        lost = set(partitions)
        self._revoked.update(lost)
        dropped = self._dispatcher.drop(lost)
        self._in_flight -= len(dropped)
        self.stats.abandoned += len(dropped)
        for record in dropped:
            self._offsets.abandon((record.topic, record.partition), record.offset)
        # records not started stay unfinished: never committed here, the next owner reads them again
        self._wait_finished(lambda: self._offsets.unfinished(lost) == 0, self.stop_timeout)
        if self._consumer is not None:
            try:
                self._commit(self._consumer, sync=True, partitions=lost)
            except BrokerError as exc:
                log.warning("commit on revoke failed (the next owner re-reads those records): %s", exc)
        self._offsets.forget(lost)
        log.info("worker %s revoked %s", self.name, partitions)

    def _runnable(self, record: Record) -> bool:
        return not self._stopping.is_set() and (record.topic, record.partition) not in self._revoked

    # -- finishing --------------------------------------------------------------------------------

    def _on_done(self, record: Record, outcome: Outcome | None) -> None:
        self._outcomes.put((record, outcome))

    def _finish_loop(self) -> None:
        get = self._outcomes.get
        while True:
            item = get()
            if item is None:
                return
            batch = [item]
            try:
                while len(batch) < 2000:
                    nxt = self._outcomes.get_nowait()
                    if nxt is None:
                        self._finish(batch)
                        return
                    batch.append(nxt)
            except queue.Empty:
                pass
            self._finish(batch)

    def _finish(self, batch: list[tuple[Record, Outcome | None]]) -> None:
        """Make a batch of outcomes durable, then report their offsets finished.

        Order matters for a crash in between: a final FAILURE is stored only after its dead letter is
        acknowledged (a redelivery finding FAILURE is skipped, so the letter must exist by then);
        a RETRY state is stored before its retry is sent (a redelivery finding RETRY runs again).
        """
        outcomes = [o for _, o in batch if o is not None]
        first = [o.result for o in outcomes if o.result is not None and o.kind is not Kind.DEAD]
        if first:
            self._retrying("store results", lambda: self.app.backend.store_many(first))
        sends = [self._follow_up(o) for o in outcomes if o.kind is not Kind.SUCCESS]
        if sends:
            self._send_all(sends)
        failures = [o.result for o in outcomes if o.result is not None and o.kind is Kind.DEAD]
        if failures:
            self._retrying("store results", lambda: self.app.backend.store_many(failures))
        for o in outcomes:
            self.stats.by_kind[o.kind.value] = self.stats.by_kind.get(o.kind.value, 0) + 1
        self.stats.succeeded += sum(o.kind is Kind.SUCCESS for o in outcomes)
        for record, outcome in batch:
            if outcome is None:
                self.stats.abandoned += 1
            self._finished.append((record, outcome is not None))
            self._dispatcher.release(record)
        self._finished_event.set()

    def _follow_up(self, outcome: Outcome) -> Outgoing:
        """The message a retry or dead letter must produce before the offset may be committed."""
        record = outcome.record
        if outcome.kind is Kind.RETRY and outcome.message is not None:
            self.stats.retried += 1
            # re-encode with the serializer the message came in (a pickle task's args may not be JSON)
            content_type = (record.header(H_CONTENT_TYPE) or b"application/json").decode(errors="replace")
            serializer = next((n for n in self.app.settings.accept_content
                               if self.app.serializers.get(n).content_type == content_type), "json")
            value, headers = outcome.message.encode(self.app.serializers, serializer)
            headers.append((H_ORIGIN, record.topic.encode()))
            topic = self.app.delay_topic(outcome.retry_delay)
            return topic, record.key, value, headers
        if outcome.kind is Kind.DEAD:
            self.stats.dead += 1
        else:
            self.stats.rejected += 1
        headers = list(record.headers) + [
            ("error-type", outcome.error_type.encode()),
            ("error-message", outcome.error_message.encode(errors="replace")[:4096]),
            ("error-traceback", outcome.error_traceback.encode(errors="replace")[:16384]),
            ("dead-reason", outcome.kind.value.encode()),
            ("worker", self.name.encode()),
            ("original-topic", record.topic.encode()),
            ("original-partition", str(record.partition).encode()),
            ("original-offset", str(record.offset).encode()),
            ("dead-at", repr(time.time()).encode()),
        ]
        # record.topic, not the origin-topic header: the worker consumes task topics only, and a header
        # naming a topic without a dead-letter topic would block the finisher forever
        return self.app.dlq_topic(record.topic), record.key, record.value, headers

    def _send_all(self, messages: list[Outgoing]) -> None:
        """Produce and wait for every acknowledgement; re-send what failed until it succeeds."""
        producer = self._producer
        assert producer is not None
        pending = messages
        while pending:
            failed: list[Outgoing] = []
            acked = [0]

            def reporter(message: Outgoing) -> Callable[[BaseException | None, Record | None], None]:
                def report(err: BaseException | None, _record: Record | None) -> None:
                    acked[0] += 1
                    if err is not None:
                        failed.append(message)
                return report

            for m in pending:
                self._produce(producer, m, reporter(m))
            while acked[0] < len(pending):
                producer.poll(0.1)
            if failed:
                log.warning("%d retry/dead-letter messages not acknowledged; sending again", len(failed))
                time.sleep(0.5)
            pending = failed

    def _produce(self, producer: Producer, message: Outgoing,
                 report: Callable[[BaseException | None, Record | None], None]) -> None:
        """Queue one message; a message refused as too large is sent again without its traceback."""
        topic, key, value, headers = message
        try:
            self._retrying("produce", lambda: producer.produce(topic, key, value, headers, report), _permanent)
        except BrokerError as exc:
            slim = [(k, v) for k, v in headers if k != "error-traceback"]
            log.error("cannot send to %s (%s); sending it without its traceback header", topic, exc)
            self._retrying("produce", lambda: producer.produce(topic, key, value, slim, report))

    def _retrying(self, what: str, fn: Callable[[], T], give_up: Callable[[Exception], bool] | None = None) -> T:
        """Run ``fn`` until it succeeds: an outage delays commits, it never loses an outcome.

        ``give_up(exc)`` true re-raises at once (an error no retry can mend).
        """
        pause = 0.1
        while True:
            try:
                return fn()
            except (BackendError, BrokerError) as exc:
                if give_up is not None and give_up(exc):
                    raise
                log.warning("%s failed, retrying in %.1f s: %s", what, pause, exc)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    # -- delayed messages -------------------------------------------------------------------------

    def _forward_loop(self) -> None:
        """Move due messages from the delay tiers back to their task topics, in partition order."""
        held: dict[TopicPartition, deque[Record]] = {}
        paused: set[TopicPartition] = set()

        def revoke(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                held.pop(tp, None)
                paused.discard(tp)

        consumer = self.app.broker.consumer(f"{self.app.group}.delay", self.app.delay_topics, None, revoke,
                                            **self.app.settings.consumer_options)
        producer = self._producer
        assert producer is not None
        try:
            while not self._stopping.is_set():
                for record in consumer.consume(500, 0.2):
                    tp = (record.topic, record.partition)
                    if tp not in held:
                        held[tp] = deque()
                    held[tp].append(record)
                due: list[Record] = []
                now = time.time()
                for tp, records in held.items():
                    while records and _due_at(records[0]) <= now:
                        due.append(records.popleft())
                if due:
                    self._send_all([(self._forward_target(r), r.key, r.value,
                                     [h for h in r.headers if h[0] != H_ORIGIN]) for r in due])
                    self.stats.forwarded += len(due)
                    commits: dict[TopicPartition, int] = {}
                    for r in due:
                        commits[(r.topic, r.partition)] = r.offset + 1
                    consumer.commit(commits)
                # bound memory: stop reading a tier partition whose head is far from due
                full = {tp for tp, records in held.items() if len(records) >= 10000} - paused
                drained = {tp for tp in paused if not held.get(tp)}
                if full:
                    consumer.pause(full)
                if drained:
                    consumer.resume(drained)
                paused = (paused | full) - drained
        finally:
            consumer.close()


    def _forward_target(self, record: Record) -> str:
        """The task topic a delayed record returns to; a dead-letter topic when it names none."""
        origin = (record.header(H_ORIGIN) or b"").decode(errors="replace")
        if origin in self._known_topics or origin in self._refresh_known_topics():
            return origin
        target = self.app.dlq_topic(record.topic)
        self.app.ensure_topic(target, 1)
        log.error("delayed record %s[%d]@%d names no task topic (%r): dead-lettered to %s",
                  record.topic, record.partition, record.offset, origin, target)
        return target

    def _refresh_known_topics(self) -> set[str]:
        self._known_topics = set(self.app.broker.list_topics())
        return self._known_topics


def _due_at(record: Record) -> float:
    """When a delayed record is due; at once when its eta header is missing or unreadable."""
    try:
        return float(record.header(H_ETA) or 0)
    except ValueError:
        return 0.0


def _task_by_topic(app: Taskq, name: str) -> Task:
    for task in app.tasks.values():
        if task.topic == name:
            return task
    raise NotRegistered(name)
