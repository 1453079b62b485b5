"""The worker, and its consumer thread: consume, dispatch, track offsets, commit.

Threads and their hand-offs:
- the consumer thread (``Worker.run``) owns the group consumer and the :class:`OffsetTracker`; it
  hands records to the :class:`KeyedDispatcher`, which submits them to the pool, or, for batch
  tasks, to the :class:`Batcher`, which submits lists of them (``Pool.submit_batch``);
- the pool runs records and hands each outcome to the :class:`Finisher` (``Finisher.put``);
- the finisher makes outcomes durable (results stored, retries and dead letters acknowledged through
  the :class:`Sender`), then calls ``Worker._on_finished`` which releases their keys in the dispatcher
  and queues the records on ``_finished`` (a deque the consumer thread drains); with events on, only
  once the broker acknowledged their task events (``EventsHook.hold``, bounded);
- the :class:`Forwarder` moves due delayed messages back to their task topics.
An offset is committed only when it and every offset before it in its partition are finished.
Every state change is reported through the worker's :class:`~taskq.hooks.HookSet` (resolved once in
``run``): the counters (:class:`StatsHook`), task events (:class:`~taskq.events.EventsHook`),
``track_started`` and the app's own hooks listen there; nothing else in the worker counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial

from taskq.app import Taskq
from taskq.brokers.base import Consumer, Record, TopicPartition
from taskq.errors import BrokerError, NotRegistered, OutageTooLong, TaskqError
from taskq.events import HEARTBEAT_INTERVAL, EventsHook
from taskq.hooks import Hook, HookSet, WorkerInfo
from taskq.message import H_ATTEMPTS, H_CANVAS, H_ETA, H_ID, H_PARENT_ID
from taskq.pools import make_pool
from taskq.results.base import REVOKED, ResultRecord
from taskq.task import Task
from taskq.topic_admin import check_members
from taskq.topics import DLQ_PARTITIONS, is_dlq
from taskq.worker.batching import Batcher
from taskq.worker.dispatch import KeyedDispatcher
from taskq.worker.finisher import Finished, Finisher
from taskq.worker.forwarder import Forwarder
from taskq.worker.heartbeat import Heartbeat
from taskq.worker.hold import RetryHolder
from taskq.worker.offsets import OffsetTracker
from taskq.worker.priority import PriorityScheduler
from taskq.worker.revoke import IdleCheck, RevokeGate
from taskq.worker.sender import Sender, retrying
from taskq.worker.started import TrackStarted
from taskq.worker.stats import StatsHook, WorkerStats

log = logging.getLogger("taskq.worker")
FIRST_BATCH = 64  # records taken at most while nothing is in flight
PAUSE_AFTER = 10.0  # seconds with prefetch full before partitions are paused
RESENT_HEADERS = (H_ETA, H_ATTEMPTS, H_PARENT_ID)  # set on the sends a crash of the sender can repeat
BACKEND_CONNECTIONS = 2  # opened ahead: one for the consumer thread's checks, one for the finisher
COMMIT_INTERVAL = 0.2  # seconds between asynchronous commits of finished work
SKIP_INTERVAL = 1.0  # s between looks, while idle, for offsets past the last record (transaction markers)
IDLE_COMMIT_INTERVAL = 0.02  # s between them once all work taken is finished (a drained backlog commits at once)
PREFETCH_BYTES = 64 * 1024 * 1024  # payload bytes taken but unfinished at most (librdkafka's queue holds as much)


class Worker:
    """Consumes task topics in the app's consumer group and runs their tasks.

    ``concurrency`` tasks run at once (for ``asyncio``: coroutines in flight); ``prefetch`` bounds the
    records taken but not finished, and ``prefetch_bytes`` their payload bytes (so that large payloads,
    such as 100 KB documents, waiting for a slow task do not fill memory: one batch may go past it).
    ``task_batch_size`` / ``task_batch_wait`` override the batch size and wait of batch tasks
    (``@app.task(batch_size=...)``); a batch is one call and one pool slot. A stop waits up to
    ``stop_timeout`` seconds for running tasks (``stop(now=True)``: not at all); those still running then
    are left uncommitted, to be delivered again.
    """

    def __init__(
        self,
        app: Taskq,
        tasks: Iterable[str] | None = None,
        concurrency: int = 8,
        pool: str = "threads",
        batch_size: int = 1000,
        prefetch: int | None = None,
        prefetch_bytes: int = PREFETCH_BYTES,
        name: str | None = None,
        app_path: str | None = None,
        stop_timeout: float = 30.0,
        forward_delayed: bool = True,
        task_batch_size: int | None = None,
        task_batch_wait: float | None = None,
    ) -> None:
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        selected = list(tasks) if tasks else list(app.tasks)
        self.tasks = [app.tasks[t] if t in app.tasks else _task_by_topic(app, t) for t in selected]
        self.topics = [topic for t in self.tasks for topic in t.topics]  # with every priority level
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.prefetch = prefetch or max(batch_size * 4, concurrency * 4)
        self.prefetch_bytes = prefetch_bytes
        self.stop_timeout = stop_timeout
        self.forward_delayed = forward_delayed
        self.stats = WorkerStats()
        self.pool_kind = pool
        self.pool = make_pool(pool, app, concurrency, self.name, app_path)
        self.pool.on_fatal = self._fail
        self.hooks = HookSet([StatsHook(self.stats)])  # until run() adds the app's, events, track_started
        self._assignment: tuple[TopicPartition, ...] = ()
        self._stopping = threading.Event()
        self._stop_now = threading.Event()  # set: nothing waits for running tasks any more
        self.left_running = 0  # tasks still running when the stop stopped waiting for them
        self._fatal: TaskqError | None = None  # set by a thread that gave up (an outage, a pool that cannot go on)
        self._finished: deque[tuple[Record, bool]] = deque()  # (record, offset may be committed)
        # finished records go to _finished through this: with events on, once their events are acknowledged
        self._after_events: Callable[[Finished], None] = self._to_offsets
        self._finished_event = threading.Event()
        self._offsets = OffsetTracker()
        self._revoked: set[TopicPartition] = set()
        self._in_flight = 0
        self._in_flight_bytes = 0  # payload bytes of the records counted in _in_flight
        self._running: dict[bytes, Record] = {}  # task id -> its record, taken here and not finished
        self._dispatcher = KeyedDispatcher(self.pool.submit)
        levels = {topic: level for t in self.tasks for level, topic in enumerate(t.topics)}
        # each level queues up to prefetch / levels (and one poll batch more before its pause takes
        # effect); the bound that stops all fetching is raised by that overshoot, so that full low
        # levels never stop the fetching of a high level whose queue runs low
        count = max(levels.values()) + 1
        self._priorities = PriorityScheduler(levels, self._dispatcher.dispatch, concurrency * 2,
                                             max(1, self.prefetch // count)) if count > 1 else None
        self._fetch_bound = self.prefetch + (count * batch_size + concurrency * 2 if count > 1 else 0)
        self._batcher = Batcher(self.pool.submit_batch, {
            topic: (task_batch_size or t.batch_size, t.batch_wait if task_batch_wait is None else task_batch_wait)
            for t in self.tasks if t.is_batch for topic in t.topics})
        # where a record that is not a batch task's goes: the priority levels, or straight to its key
        self._dispatch: Callable[[Record], None] = (
            self._priorities.add if self._priorities is not None else self._dispatcher.dispatch)
        self._consumer: Consumer | None = None
        self._left = False  # the consumer was closed (the group left)
        self._holder: RetryHolder | None = None
        self._after_first_poll: Callable[[], None] | None = None  # starts the forwarder
        self._gate: RevokeGate | None = None
        self._last_commit = 0.0
        self._last_skip = 0.0
        self.ready = threading.Event()  # set once the consumer has joined the group
        self._idle_check = IdleCheck(app, self.name, self.topics, check_members)

    # -- lifecycle --------------------------------------------------------------------------------

    def stop(self, now: bool = False) -> None:
        """Stop fetching, finish what is running (up to ``stop_timeout``; ``now``: leave it unfinished),
        commit, leave the group (safe from any thread)."""
        if now:
            self._stop_now.set()
        self._stopping.set()

    def run(self) -> WorkerStats:
        """Work until :meth:`stop`; returns the counters.

        Raises :class:`~taskq.errors.OutageTooLong` once the broker or the result backend stayed unreachable
        for ``outage_timeout`` seconds (the work not made durable stays uncommitted and is redelivered), and
        :class:`~taskq.errors.WorkerLostError` when the processes pool cannot start a child."""
        if not self.topics:
            raise BrokerError("no tasks to consume: register tasks or name them with -Q")
        app = self.app
        if not app.broker.listening():
            # Kafka is not running, and its clients would log every failed connect: the topic check's admin
            # client logs nothing and says so in one line after connect_timeout (or goes on once Kafka is up)
            app.ensure_topics(self._own_topics())
        # Each waits on the broker meanwhile: the revocations are read (first: three new clients in a row),
        # the result backend loads, the group is joined, and the topics are checked.
        gate = self._gate = RevokeGate(app, self.pool, self.name)
        gate.start()
        try:
            threading.Thread(target=self._load_backend, name="taskq-load-backend", daemon=True).start()
            # the first poll of the consume loop serves the assignment
            consumer = self._consumer = app.broker.consumer(app.group, self.topics, self._on_assign,
                                                            self._on_revoke, **app.settings.consumer_options)
            try:
                self._serve(consumer, gate, self._check_topics(consumer))
            finally:
                self._close(consumer)  # when starting up failed; a no-op after _serve closed it
        finally:
            gate.stop()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _check_topics(self, consumer: Consumer) -> Future[None]:
        """Create the topics this worker needs that are missing, in a thread (done or failed: the future)."""
        checked: Future[None] = Future()

        def check() -> None:
            try:
                created = self.app.ensure_topics(self._own_topics()) & set(self.topics)
            except BaseException as exc:  # noqa: BLE001 - raised by the start-up, from run()
                checked.set_exception(exc)
                return
            checked.set_result(None)
            # The task topics may have been created after the subscription, by this check or by a client's
            # first send meanwhile: the group would take them up only at its next metadata refresh (~1 s)
            consumer.topics_created(created)

        threading.Thread(target=check, name="taskq-topic-check", daemon=True).start()
        return checked

    def _own_topics(self) -> dict[str, int]:
        """The topics this worker needs and their partition counts, made in one CreateTopics: the task
        topics, their dead letters, the delay tiers and the events topic."""
        app = self.app
        partitions = {topic: t.partitions for t in self.tasks for topic in t.topics}
        topics = {**partitions, **{app.dlq_topic(t): DLQ_PARTITIONS for t in partitions},
                  **{t: app.settings.default_partitions for t in app.delay_topics}}
        if app.settings.events:
            topics[app.events_topic] = app.settings.default_partitions
        return topics

    def _recreate_topic(self, topic: str) -> None:
        """Create again a topic deleted while the worker runs (its sends of retries, dead letters and
        follow-ups would otherwise fail until the worker stopped with OutageTooLong)."""
        app = self.app
        partitions = self._own_topics().get(topic) or app.task_topics().get(topic)
        app.recreate_topic(topic, partitions or (DLQ_PARTITIONS if is_dlq(topic) else app.settings.default_partitions))

    def _load_backend(self) -> None:
        """Make the result backend (importing its client library) and open its connections, off the
        start-up's path: a backend that does not answer is reported by the first call that needs it."""
        with contextlib.suppress(Exception):  # a bad backend URL is reported when the start-up uses it
            self.app.backend.open_connections(BACKEND_CONNECTIONS)

    def _serve(self, consumer: Consumer, gate: RevokeGate, topics_checked: Future[None]) -> None:
        """Start the finisher, pool and forwarder, consume until stopped, shut down."""
        app = self.app
        finisher, hook_set, events, sender = self._start_up(gate, topics_checked)
        forwarder = None
        if self.forward_delayed:
            forwarder = Forwarder(app, sender, self._stopping, hook_set.forwarded, self._fail)
            # after the first poll: its client's start and group join would delay the first records
            self._after_first_poll = forwarder.start
        hook_set.worker_online(self.info())
        heartbeat = Heartbeat(lambda: hook_set.worker_heartbeat(self.info()), HEARTBEAT_INTERVAL)
        if hook_set.overridden("worker_heartbeat"):
            heartbeat.start()
        try:
            log.info("worker %s consuming %s in group %s", self.name, self.topics, app.group)
            try:
                try:
                    self._consume_loop(consumer)
                except OutageTooLong as exc:  # e.g. checking results for redeliveries
                    self._fail(exc)
                self._shutdown(consumer)
            finally:
                self._stopping.set()
                self._close(consumer)
                finisher.stop(self.stop_timeout)
                gate.stop()
                if forwarder is not None:
                    forwarder.join(self.stop_timeout)
        finally:
            heartbeat.stop()
            hook_set.worker_offline(self.info())
            if events is not None:
                events.close(app.settings.send_timeout)
            sender.flush(app.settings.send_timeout)

    def _start_up(self, gate: RevokeGate,
                  topics_checked: Future[None]) -> tuple[Finisher, HookSet, EventsHook | None, Sender]:
        """The producer, hooks, finisher and pool; the pool starts once the stored revocations are read and the
        topics checked (its failure is raised here)."""
        app = self.app
        app.backend  # noqa: B018 - fails fast on a bad backend URL (made by _load_backend meanwhile)
        producer = app.broker.producer(**app.settings.producer_options)
        sender = Sender(producer, app.settings.outage_timeout, self._recreate_topic)
        hooks: list[Hook] = [StatsHook(self.stats), *app.hooks]
        events = None
        if app.settings.track_started:
            hooks.append(TrackStarted(app.backend, self.name))
        if app.settings.events:
            events = EventsHook(app, producer, self.name, self._recreate_topic)
            hooks.append(events)
            self._after_events = partial(events.hold, release=self._to_offsets)
        self.hooks = hook_set = HookSet(hooks)
        holder = self._holder = RetryHolder(self.pool.submit)
        finisher = Finisher(app, sender, self.name, self._on_finished, hook_set.finished, holder.hold, self._fail)
        gate.wait()
        try:
            topics_checked.result()
        except BaseException:
            if events is not None:
                events.close(0)  # its thread, at once: nothing was published yet
            raise
        self.pool.start(gate.wrap_done(finisher.put), self._make_runnable(gate, hook_set),
                        gate.wrap_done_many(finisher.put_many))
        finisher.start()
        return finisher, hook_set, events, sender

    def _close(self, consumer: Consumer) -> None:
        """Leave the group (the revoke callback commits what is done first), once."""
        if not self._left:
            self._left = True
            consumer.close()

    def info(self) -> WorkerInfo:
        """A snapshot of this worker for the worker_* hooks (safe from any thread)."""
        return WorkerInfo(self.name, socket.gethostname(), os.getpid(), self.pool_kind, self.concurrency,
                          self.app.group, max(self._in_flight, 0), self.stats.processed, self._assignment,
                          HEARTBEAT_INTERVAL)

    def _consume_loop(self, consumer: Consumer) -> None:
        paused: list[TopicPartition] = []
        full_since = 0.0
        while not self._stopping.is_set():
            self._take_finished()
            self._commit(consumer)
            if self._in_flight >= self._fetch_bound or self._in_flight_bytes >= self.prefetch_bytes:
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
            if self._priorities is not None:
                self._pause_levels(consumer)
            # An idle pool gets a small batch first, so tasks start before a full batch is decoded; then
            # twice the records in flight, up to batch_size.
            take = min(self.batch_size, max(FIRST_BATCH, 2 * self._in_flight))
            records = consumer.consume(take, 0.02 if self._in_flight else 0.1)
            if self._after_first_poll is not None:
                self._after_first_poll()
                self._after_first_poll = None
            self.ready.set()
            if records:
                self._accept(records)
            self._batcher.due()

    def _shutdown(self, consumer: Consumer) -> None:
        if self._holder is not None:
            self._holder.release()  # held retries: abandoned now (not runnable), redelivered later
        self._abandon(self._dispatcher.drop() + (self._priorities.drop() if self._priorities else [])
                      + self._batcher.drop())
        self._wait_finished(lambda: self._in_flight <= 0 or self._fatal is not None or self._stop_now.is_set(),
                            self.stop_timeout)
        self.left_running = max(self._in_flight, 0)
        if self.left_running:
            log.warning("worker %s: %d task(s) still running %s; left unfinished and uncommitted, they are "
                        "delivered again", self.name, self.left_running,
                        "when told to stop at once" if self._stop_now.is_set() else
                        f"after stop_timeout ({self.stop_timeout:g} s)")
            self._stop_now.set()  # leaving the group (its revoke) does not wait for them either
        self._commit_on_stop(consumer)
        self.pool.stop(0 if self.left_running else None)
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
        self.hooks.received(records, time.time())
        skip = self._already_final(records) if self.app.settings.skip_finished else {}
        skipped: list[Record] = []
        take = self._offsets.take
        running = self._running
        batcher = self._batcher if self._batcher.active else None
        dispatch = self._dispatch
        size = 0
        for record in records:
            take((record.topic, record.partition), record.offset)
            size += len(record.value or b"")
            # only tasks sent by a task (canvas follow-ups) are checked for a second copy: a follow-up
            # sent again after a crash has its original's id (see taskq.flow)
            task_id = record.header(H_ID) if record.header(H_PARENT_ID) is not None else None
            final = skip.get((record.topic, record.partition, record.offset)) if skip else None
            if (final is not None and final.status == REVOKED and record.header(H_CANVAS) is not None
                    and self._gate is not None):
                self._gate.note(final.id)  # run to its REVOKED outcome, which stops what follows it
                final = None
            if final is not None or (task_id is not None and task_id in running):
                # final already, or a second copy of a follow-up taken here and not finished: not run again
                skipped.append(record)
            else:
                if task_id is not None:
                    running[task_id] = record
                if batcher is not None and batcher.handles(record):
                    batcher.add(record)
                else:
                    dispatch(record)
        self._in_flight += len(records)
        self._in_flight_bytes += size
        if skipped:
            self.hooks.skipped(skipped, [skip.get((r.topic, r.partition, r.offset)) for r in skipped])
            self._after_events([(r, True) for r in skipped])
        if self._priorities is not None:
            self._priorities.pump()

    def _pause_levels(self, consumer: Consumer) -> None:
        """Pause the partitions of priority levels with a full queue; resume them once it drains."""
        assert self._priorities is not None
        pause, resume = self._priorities.pauses(consumer.assignment())
        if pause:
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)

    def _already_final(self, records: list[Record]) -> dict[tuple[str, int, int], ResultRecord]:
        """Offsets of records whose task already has a final result (redeliveries after a crash).

        Looked up: records an earlier owner of their partition can have been given (below the partition's
        end when it was assigned here; all of a partition whose end is not known), and taskq's own sends,
        which a crash can repeat at any time (delayed and retried tasks, canvas follow-ups). A client's
        send that arrived after the assignment is no redelivery and costs no lookup."""
        assert self._consumer is not None
        unseen_from = self._consumer.unseen_from()
        with_id = [(r, i.decode(errors="replace")) for r in records
                   if (i := r.header(H_ID)) and (r.offset < unseen_from.get((r.topic, r.partition), r.offset + 1)
                                                 or any(r.header(h) is not None for h in RESENT_HEADERS))]
        if not with_id:
            return {}
        ids = [task_id for _, task_id in with_id]
        backend = self.app.backend
        bound = self.app.settings.outage_timeout
        # a stop ends the wait for a backend that does not answer: these records have not started, and a
        # stopping worker starts none of them (they stay uncommitted for the next owner)
        stopping = self._stopping
        if not retrying("check results", lambda: not stopping.is_set() and backend.any_stored(ids), bound):
            return {}
        stored = retrying("check results", lambda: [] if stopping.is_set() else backend.get_readable(ids), bound)
        return {(record.topic, record.partition, record.offset): result
                for (record, _), result in zip(with_id, stored) if result is not None and result.ready}

    def _abandon(self, dropped: list[Record]) -> None:
        """Records dropped before they started: never committed here, the next owner reads them again."""
        if dropped:
            self.hooks.abandoned(dropped)
        self._in_flight -= len(dropped)
        self._in_flight_bytes -= sum(len(record.value or b"") for record in dropped)
        if self._priorities is not None:
            self._priorities.finished(dropped)
        for record in dropped:
            self._not_running(record)
            self._offsets.abandon((record.topic, record.partition), record.offset)

    def _not_running(self, record: Record) -> None:
        if not self._running:
            return
        task_id = record.header(H_ID)
        if task_id is not None and self._running.get(task_id) is record:
            del self._running[task_id]

    def _take_finished(self) -> None:
        finished = self._finished
        if not finished:
            return
        priorities = self._priorities
        offsets = self._offsets
        count = size = 0
        while finished:
            record, done = finished.popleft()
            count += 1
            size += len(record.value or b"")
            if self._running:
                self._not_running(record)
            if done:
                offsets.finish((record.topic, record.partition), record.offset)
            else:
                offsets.abandon((record.topic, record.partition), record.offset)
            if priorities is not None:
                priorities.finished((record,))
        self._in_flight -= count
        self._in_flight_bytes -= size
        if priorities is not None:
            priorities.pump()

    def _commit(self, consumer: Consumer, sync: bool = False, partitions: Iterable[TopicPartition] | None = None,
                ) -> None:
        """Commit finished work: asynchronously at most every COMMIT_INTERVAL (IDLE_COMMIT_INTERVAL when
        nothing taken is unfinished), or now and synchronously.

        One commit per loop at a low message rate would be a request per message, and the client's
        commit queue then falls behind (lag grows although every task is done).
        """
        now = time.monotonic()
        interval = COMMIT_INTERVAL if self._in_flight > 0 else IDLE_COMMIT_INTERVAL
        if not sync and now - self._last_commit < interval:
            return
        self._last_commit = now
        if not sync and self._in_flight == 0 and now - self._last_skip >= SKIP_INTERVAL:
            self._last_skip = now  # idle: move past transaction markers, which hold no record to finish
            for tp, offset in consumer.positions(consumer.assignment()).items():
                self._offsets.skip_to(tp, offset)
        for tp in consumer.failed_commits():  # e.g. refused during a rebalance: nothing else would resend it
            self._offsets.commit_failed(tp)
        offsets = self._offsets.to_commit(partitions, every=sync)
        if offsets:
            consumer.commit(offsets, asynchronous=not sync)
            self.hooks.committed(offsets)

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
        self._assignment = tuple(sorted(set(self._assignment) | set(partitions)))
        log.info("worker %s assigned %s", self.name, partitions)
        self._idle_check.after_assignment()
        self.hooks.assigned(partitions)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Finish (or abandon) in-flight work of these partitions and commit exactly what is done."""
        lost = set(partitions)
        self._revoked.update(lost)
        if self._holder is not None:
            self._holder.release(lost)
        self._abandon(self._dispatcher.drop(lost) + (self._priorities.drop(lost) if self._priorities else [])
                      + self._batcher.drop(lost))
        self._wait_finished(lambda: self._offsets.unfinished(lost) == 0 or self._fatal is not None
                            or self._stop_now.is_set(), self.stop_timeout)
        if self._consumer is not None:
            try:
                self._commit(self._consumer, sync=True, partitions=lost)
            except BrokerError as exc:
                log.warning("commit on revoke failed (the next owner re-reads those records): %s", exc)
        self._offsets.forget(lost)
        self._assignment = tuple(tp for tp in self._assignment if tp not in lost)
        log.info("worker %s revoked %s", self.name, partitions)
        self.hooks.revoked(partitions)

    def _make_runnable(self, gate: RevokeGate, hook_set: HookSet) -> Callable[[Record], bool]:
        """What the pool asks right before it runs a record: True means it starts now (not stopping, its
        partition not revoked, the task not revoked); the ``started`` hooks are told. One call per task."""
        stopping = self._stopping
        revoked = self._revoked
        gate_runnable = gate.runnable
        started = hook_set.started if hook_set.overridden("started") else None

        def runnable(record: Record) -> bool:
            if not gate_runnable(record) or stopping.is_set() or (record.topic, record.partition) in revoked:
                return False
            if started is not None:
                started(record)
            return True
        return runnable

    # -- finisher thread --------------------------------------------------------------------------

    def _fail(self, error: TaskqError) -> None:
        """From the finisher or the forwarder (an outage outlasted its bound) or the pool (it cannot go on):
        stop, and raise it from run()."""
        if self._fatal is None:
            self._fatal = error
        self._stopping.set()
        self._finished_event.set()

    def _on_finished(self, batch: Finished) -> None:
        """From the finisher: these records' outcomes are durable (or they were abandoned)."""
        abandoned = [record for record, durable in batch if not durable]
        if abandoned:
            self.hooks.abandoned(abandoned)
        release = self._dispatcher.release
        if self._batcher.active:
            batcher = self._batcher
            for record, _ in batch:
                if batcher.handles(record):
                    batcher.release(record)
                else:
                    release(record)
        else:
            for record, _ in batch:
                release(record)
        self._after_events(batch)

    def _to_offsets(self, batch: Finished) -> None:
        """Hand finished records to the consumer thread (any thread): their offsets may be committed."""
        self._finished.extend(batch)
        self._finished_event.set()


def _task_by_topic(app: Taskq, name: str) -> Task:
    for task in app.tasks.values():
        if task.topic == name:
            return task
    raise NotRegistered(name)
