"""Execution pools: threads, processes or an asyncio loop. They only run records and report outcomes.

Every pool calls ``done(record, outcome)`` from one of its own threads; ``outcome`` is None when the
record was abandoned before it started (the worker is stopping or lost the partition), so its offset
must not be committed. ``submit_batch(records)`` runs a batch task once for several records and reports
them together through ``done_many``, so the finisher makes the whole batch durable at once. Every
pool enforces the task's hard ``time_limit``: the run is ended, its outcome is a
:class:`~taskq.errors.TimeLimitExceeded` failure, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskq import execution
from taskq.brokers.base import Record
from taskq.errors import ConfigError, SoftTimeLimitExceeded, TaskqError, TimeLimitExceeded, WorkerLostError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from taskq.app import Taskq

log = logging.getLogger("taskq.pools")
Done = Callable[[Record, "execution.Outcome | None"], None]
DoneMany = Callable[[list[tuple[Record, "execution.Outcome | None"]]], None]
Runnable = Callable[[Record], bool]
WATCH_INTERVAL = 0.05
CHILD_START_TIMEOUT = 60.0
CHILD_EXIT_WAIT = 1.0  # s to reap a child whose pipe closed, for its exit code
READY = "ready"
WAITING, TURN = "waiting", "turn"  # from a child: its run waits for a rate-limit turn / got it


class Pool:
    """Runs records with ``concurrency`` at once."""

    def __init__(self, app: Taskq, concurrency: int, worker_name: str, app_path: str | None = None) -> None:
        self.app = app
        self.concurrency = concurrency
        self.worker_name = worker_name
        self.app_path = app_path
        #: told when the pool cannot go on (a pool process that cannot be started); the worker stops
        self.on_fatal: Callable[[TaskqError], None] = lambda error: log.error("%s", error)

    def start(self, done: Done, runnable: Runnable, done_many: DoneMany | None = None) -> None:
        self.done = done
        self.done_many: DoneMany = done_many or self._each_done
        self.runnable = runnable

    def _each_done(self, pairs: list[tuple[Record, execution.Outcome | None]]) -> None:
        for record, outcome in pairs:
            self.done(record, outcome)

    def submit(self, record: Record) -> None:
        raise NotImplementedError

    def submit_batch(self, records: list[Record]) -> None:
        """Run the batch task of ``records`` once for all of them (see :func:`execution.run_batch`)."""
        raise NotImplementedError

    def _run_batch(self, records: list[Record]) -> None:
        """Run a batch in this thread and report every record of it in one ``done_many`` call."""
        runnable = [r for r in records if self.runnable(r)]
        pairs: list[tuple[Record, execution.Outcome | None]] = [(r, None) for r in records if r not in runnable]
        if runnable:
            pairs += zip(runnable, self._guarded_batch(
                runnable, lambda: execution.run_batch(self.app, runnable, self.worker_name)))
        self.done_many(pairs)

    def _guarded_batch(self, records: list[Record], run: Callable[[], list[execution.Outcome]],
                       ) -> list[execution.Outcome]:
        """Like :meth:`_guarded`, for a batch: one outcome per record, in order."""
        started = time.perf_counter()
        try:
            return list(run())
        except BaseException as exc:  # noqa: BLE001 - a pool never loses a record without an outcome
            log.exception("running a batch of %d records of %s failed outside the task", len(records),
                          records[0].topic)
            return [self._ended(r, exc, started) for r in records]

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the records already started, waiting at most ``timeout`` s for them (None: until
        they end); unstarted ones are reported abandoned. A record still running then gets no outcome:
        it stays uncommitted and is delivered again."""

    def terminate(self, task_id: str) -> bool:
        """End task ``task_id`` if it runs here now (its outcome: REVOKED); whether it was found."""
        log.warning("the %s pool cannot end a running task (%s runs to its end); use the processes or "
                    "asyncio pool", type(self).__name__, task_id)
        return False

    def _ended(self, record: Record, exc: BaseException, started: float) -> execution.Outcome:
        return execution.ended(self.app, record, self.worker_name, exc, started)

    def _guarded(self, record: Record, run: Callable[[], execution.Outcome], started: float,
                 ) -> execution.Outcome:
        """``run()``'s outcome; a failure outcome if the pool's own code around the task raised."""
        try:
            return run()
        except BaseException as exc:  # noqa: BLE001 - a pool never loses a record without an outcome
            log.exception("running %s[%d]@%d failed outside the task", record.topic, record.partition,
                          record.offset)
            return self._ended(record, exc, started)


@dataclass
class _Run:
    record: Record
    started: float  # time.monotonic()
    clock: float  # time.perf_counter(), for the outcome's runtime
    soft: float | None
    hard: float | None
    soft_sent: bool = False
    ended: bool = False  # past the hard limit: the watchdog interrupts it until its thread returns
    last_raise: float = 0.0  # time.monotonic() of the last TimeLimitExceeded raised in its thread
    paused_at: float | None = None  # time.monotonic() when it began waiting for a rate-limit turn

    def elapsed(self, now: float) -> float:
        """The seconds counted against its limits (waits for a rate-limit turn left out)."""
        return (now if self.paused_at is None else self.paused_at) - self.started

    def waiting(self, waiting: bool) -> None:
        """From the run's thread (:data:`execution.turn_waits`): it begins or ends waiting for its turn."""
        now = time.monotonic()
        if waiting:
            self.paused_at = now
        elif self.paused_at is not None:
            self.started += now - self.paused_at
            self.paused_at = None


class ThreadPool(Pool):
    """``concurrency`` threads pulling from one queue; the default pool.

    A watchdog raises :class:`SoftTimeLimitExceeded` in a thread past its soft limit, and
    :class:`TimeLimitExceeded` past its hard limit (again every second until the task gives up), and
    starts a replacement thread so that the pool keeps its strength. A thread can only be interrupted
    between Python bytecodes: a call blocked in C (``time.sleep``, a socket read, a long NumPy call)
    ends first. Until the overdue thread really returns, its record has no outcome, so its key stays
    held and its offset uncommitted: the next task of that key never overlaps it. Use the processes
    pool to end code blocked in C at the limit.
    """

    def start(self, done: Done, runnable: Runnable, done_many: DoneMany | None = None) -> None:
        super().start(done, runnable, done_many)
        self._queue: queue.SimpleQueue[Record | list[Record] | None] = queue.SimpleQueue()
        self._running: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # the pool's working threads
        self._overdue: set[threading.Thread] = set()  # past their hard limit, replaced, not yet returned
        self._stopping = threading.Event()
        self._limited = any(t.time_limit or t.soft_time_limit for t in self.app.tasks.values())
        try:
            for _ in range(self.concurrency):
                self._spawn()
        except RuntimeError as exc:  # "can't start new thread": the system's limit, reached part way
            self._threads = {t for t in self._threads if t.is_alive()}
            self.stop()  # the started threads return, rather than die at exit without the resources to unwind
            raise ConfigError(f"the threads pool started {len(self._threads)} of {self.concurrency} threads "
                              f"before the system refused more ({exc}): lower -c/--concurrency") from None
        if self._limited:
            threading.Thread(target=self._watch, name="taskq-watchdog", daemon=True).start()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"taskq-exec-{len(self._threads)}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def submit(self, record: Record) -> None:
        self._queue.put(record)

    def submit_batch(self, records: list[Record]) -> None:
        """A batch runs in one pool thread; time limits do not apply to batch tasks here."""
        self._queue.put(list(records))

    def _loop(self) -> None:
        app, name, done, runnable, get = self.app, self.worker_name, self.done, self.runnable, self._queue.get
        run_record = execution.run
        ident = threading.get_ident()
        while (record := get()) is not None:
            if isinstance(record, list):
                self._run_batch(record)
                continue
            if not runnable(record):
                done(record, None)
                continue
            soft, hard = execution.time_limits(app, record) if self._limited else (None, None)
            if soft is None and hard is None:
                started = time.perf_counter()
                outcome: execution.Outcome | None
                try:  # _guarded, inlined: one call less per task on the common path
                    outcome = run_record(app, record, name)
                except BaseException as error:  # noqa: BLE001 - handled as _guarded does
                    outcome = self._guarded(record, _reraise(error), started)
                done(record, outcome)
                continue
            run = _Run(record, time.monotonic(), time.perf_counter(), soft, hard)
            with self._lock:
                self._running[ident] = run
            outcome = self._limited_run(record, run)
            if run.ended:
                exc = TimeLimitExceeded(f"task ran past its time limit of {run.hard:g} s and was interrupted "
                                        f"after {run.elapsed(time.monotonic()):.1f} s")
                done(record, self._ended(record, exc, run.clock))
                with self._lock:
                    self._overdue.discard(threading.current_thread())
                return  # a replacement thread took this one's place at the limit
            done(record, outcome)

    def _limited_run(self, record: Record, run: _Run) -> execution.Outcome | None:
        """Run under the watchdog; afterwards nothing more is raised in this thread."""
        ident = threading.get_ident()
        outcome: execution.Outcome | None = None
        waits = execution.turn_waits.set(run.waiting)
        try:
            outcome = self._guarded(record, lambda: execution.run(self.app, record, self.worker_name), run.clock)
        except (TimeLimitExceeded, SoftTimeLimitExceeded):  # raised between the task and here
            pass
        finally:
            execution.turn_waits.reset(waits)
            while True:
                try:
                    with self._lock:
                        self._running.pop(ident, None)
                        _raise_in_thread(ident, None)  # drop an exception raised but not yet delivered
                    break
                except (TimeLimitExceeded, SoftTimeLimitExceeded):
                    continue
        return outcome

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            now = time.monotonic()
            replace = 0
            with self._lock:
                for ident, run in self._running.items():
                    elapsed = run.elapsed(now)
                    if run.hard is not None and elapsed > run.hard:
                        if not run.ended:
                            run.ended = True
                            replace += 1
                            thread = next((t for t in self._threads if t.ident == ident), None)
                            if thread is not None:
                                self._threads.discard(thread)
                                self._overdue.add(thread)
                            log.warning("%s[%d]@%d ran past its time limit of %g s; interrupting it (its key "
                                        "stays held until its thread returns)", run.record.topic,
                                        run.record.partition, run.record.offset, run.hard)
                        if now - run.last_raise >= 1.0:
                            run.last_raise = now
                            _raise_in_thread(ident, TimeLimitExceeded)
                    elif run.soft is not None and not run.soft_sent and elapsed > run.soft:
                        run.soft_sent = True
                        _raise_in_thread(ident, SoftTimeLimitExceeded)
            for _ in range(replace):
                self._spawn()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        _join_within(threads, timeout)
        # overdue threads are not waited for: their records have no outcome and stay uncommitted


def _join_within(threads: list[threading.Thread], timeout: float | None) -> None:
    """Join ``threads`` within ``timeout`` seconds in all (None: until each ends)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next Python instruction (None: cancel a pending one)."""
    import ctypes  # here: only time limits and terminate need it
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               None if exc_type is None else ctypes.py_object(exc_type))


class AsyncioPool(Pool):
    """One event loop thread; coroutine tasks run concurrently, plain functions in its thread executor.

    At most ``concurrency`` runs are in flight (coroutines and functions together). The hard time
    limit cancels the coroutine; soft limits apply to plain functions only.
    """

    def start(self, done: Done, runnable: Runnable, done_many: DoneMany | None = None) -> None:
        super().start(done, runnable, done_many)
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Task[None]] = {}  # running, by task id (for terminate)
        self._terminated: set[str] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="taskq-asyncio", daemon=True)
        self._thread.start()

    def submit(self, record: Record) -> None:
        self._loop.call_soon_threadsafe(self._spawn, record)

    def _spawn(self, record: Record) -> None:
        task = self._loop.create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def submit_batch(self, records: list[Record]) -> None:
        """A batch runs in the loop's thread executor, taking one slot."""
        def spawn() -> None:
            task = self._loop.create_task(self._run_batch_in_executor(list(records)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._loop.call_soon_threadsafe(spawn)

    async def _run_batch_in_executor(self, records: list[Record]) -> None:
        async with self._slots:
            await self._loop.run_in_executor(None, self._run_batch, records)

    async def _run(self, record: Record) -> None:
        async with self._slots:
            if not self.runnable(record):
                self.done(record, None)
                return
            started = time.perf_counter()
            task_id = _task_id(record)
            current = asyncio.current_task()
            if current is not None:
                self._by_id[task_id] = current
            outcome: execution.Outcome | None
            try:
                outcome = await self._execute(record)
            except asyncio.CancelledError as exc:  # terminated by a revoke, or the task's own
                outcome = (execution.revoked(record, self.worker_name, task_id, terminated=True)
                           if task_id in self._terminated else self._guarded(record, _reraise(exc), started))
            except BaseException as exc:  # noqa: BLE001 - a pool never loses a record without an outcome
                outcome = self._guarded(record, _reraise(exc), started)
            finally:
                self._by_id.pop(task_id, None)
                self._terminated.discard(task_id)
            self.done(record, outcome)

    def terminate(self, task_id: str) -> bool:
        """Cancel the coroutine of ``task_id`` (a plain function in the executor runs to its end)."""
        task = self._by_id.get(task_id)
        if task is None:
            return False
        self._terminated.add(task_id)
        self._loop.call_soon_threadsafe(task.cancel)
        return True

    async def _execute(self, record: Record) -> execution.Outcome:
        prepared = execution.prepare(self.app, record)
        if not isinstance(prepared, execution.Outcome) and not prepared[1].is_async:
            return await self._loop.run_in_executor(None, execution.run, self.app, record, self.worker_name)
        _soft, hard = execution.time_limits(self.app, record)
        return await execution.run_async(self.app, record, self.worker_name, hard)

    def stop(self, timeout: float | None = None) -> None:
        async def drain() -> None:
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout)
        except TimeoutError:
            return  # the loop's thread is a daemon: it ends with the process, its runs uncommitted
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def _task_id(record: Record) -> str:
    raw = record.header("id")
    return raw.decode(errors="replace") if raw else f"{record.topic}:{record.partition}:{record.offset}"


def _reraise(exc: BaseException) -> Callable[[], execution.Outcome]:
    def again() -> execution.Outcome:
        raise exc
    return again


def _child_main(app_path: str, conn: Connection, worker_name: str) -> None:
    """A pool process: import the app, then run records from the pipe until told to stop."""
    def soft_limit(_signum: int, _frame: object) -> None:
        raise SoftTimeLimitExceeded("soft time limit exceeded")

    signal.signal(signal.SIGUSR1, soft_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from taskq.app import load_app

    app = load_app(app_path)
    pid = os.getpid()
    name = f"{worker_name}/{pid}"
    execution.turn_waits.set(lambda waiting: conn.send(WAITING if waiting else TURN))  # the parent times the run
    for task in app.tasks.values():  # made now, not within the time limit of a first run (it may load the Redis client)
        if task.rate is not None:
            task.limiter  # noqa: B018
    conn.send(READY)  # the parent starts the clock on a task only once the child can run it
    while (record := conn.recv()) is not None:
        outcome = execution.run_batch(app, record, name) if isinstance(record, list) else execution.run(app, record, name)
        if os.getpid() != pid:  # a copy forked by the task returned from it: the pipe is the child's alone
            os._exit(0)
        conn.send(outcome)


def _receive(conn: Connection, run: _Run) -> Any:
    """What the child sent: its outcome(s), or None for a report that its run waits for a rate-limit turn
    (WAITING) or got it (TURN), noted in ``run``."""
    message = conn.recv()
    if isinstance(message, str) and message in (WAITING, TURN):
        run.waiting(message == WAITING)
        return None
    return message


def _lost(process: BaseProcess, what: str) -> WorkerLostError:
    """The error of a child that died running ``what``, with its exit code (-9: killed, as by the OOM killer)."""
    process.join(CHILD_EXIT_WAIT)  # a child that just died is reaped at once; its exit code says how it ended
    return WorkerLostError(f"pool process {process.pid} died (exit code {process.exitcode}) running {what}")


class ProcessPool(Pool):
    """``concurrency`` child processes, each importing the app; for CPU-bound tasks.

    One thread per child feeds it records over a pipe and watches the clock: past the soft limit the
    child gets SIGUSR1 (raising :class:`SoftTimeLimitExceeded`), past the hard limit it is killed and
    replaced. A child that dies mid-task fails that task with :class:`WorkerLostError`.
    """

    def start(self, done: Done, runnable: Runnable, done_many: DoneMany | None = None) -> None:
        super().start(done, runnable, done_many)
        if not self.app_path:
            raise ConfigError("the processes pool needs the app's import path (taskq worker -A module:app)")
        import multiprocessing  # here: only this pool needs it

        self._context = multiprocessing.get_context("spawn")
        self._queue: queue.SimpleQueue[Record | list[Record] | None] = queue.SimpleQueue()
        self._by_id: dict[str, BaseProcess] = {}  # running, by task id (for terminate)
        self._terminated: set[str] = set()
        self._children: set[BaseProcess] = set()  # alive, for a stop that does not wait for them
        self._left = threading.Event()  # set by that stop: the runs it kills get no outcome
        self._slots = [threading.Thread(target=self._slot, name=f"taskq-proc-{i}", daemon=True)
                       for i in range(self.concurrency)]
        for slot in self._slots:
            slot.start()

    def _spawn_child(self) -> tuple[BaseProcess, Connection]:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(self.app_path, child, self.worker_name),
                                        daemon=True)
        process.start()
        self._children.add(process)
        child.close()
        try:
            started = parent.poll(CHILD_START_TIMEOUT) and parent.recv() == READY
        except (EOFError, OSError):
            started = False
        if not started:
            process.join(CHILD_EXIT_WAIT)  # one whose import failed has exited: say so, with its exit code
            code = process.exitcode
            process.kill()
            self._children.discard(process)
            how = f"did not start within {CHILD_START_TIMEOUT:g} s" if code is None else f"exited ({code}) at start"
            raise WorkerLostError(f"pool process {how} (cannot import {self.app_path!r}?)")
        return process, parent

    def _replace_child(self, process: BaseProcess | None) -> tuple[BaseProcess, Connection] | None:
        """A new child in place of ``process`` (killed first); None when it cannot start: the worker is
        told to stop (non-zero exit), rather than run on with a slot less and its records stuck."""
        if process is not None:
            process.kill()
            process.join()
            self._children.discard(process)
        try:
            return self._spawn_child()
        except WorkerLostError as exc:
            self.on_fatal(exc)
            return None

    def submit(self, record: Record) -> None:
        self._queue.put(record)

    def submit_batch(self, records: list[Record]) -> None:
        """A batch goes to one child in one message; the hard time limit (if any) bounds the whole batch."""
        self._queue.put(list(records))

    def _slot(self) -> None:
        if (child := self._replace_child(None)) is None:
            return
        process, conn = child
        while (record := self._queue.get()) is not None:
            if isinstance(record, list):
                runnable = [r for r in record if self.runnable(r)]
                pairs: list[tuple[Record, execution.Outcome | None]] = [(r, None) for r in record
                                                                       if r not in runnable]
                if runnable:
                    outcomes, replace = self._run_batch_in_child(process, conn, runnable)
                    if self._left.is_set():
                        return
                    pairs += zip(runnable, outcomes)
                self.done_many(pairs)
                if runnable and replace:
                    if (child := self._replace_child(process)) is None:
                        return
                    process, conn = child
                continue
            if not self.runnable(record):
                self.done(record, None)
                continue
            task_id = _task_id(record)
            self._by_id[task_id] = process
            try:
                outcome, replace = self._run_in_child(process, conn, record)
            finally:
                self._by_id.pop(task_id, None)
            if self._left.is_set():  # killed by a stop that did not wait: uncommitted, delivered again
                return
            if task_id in self._terminated:  # killed by terminate: REVOKED unless it had just finished
                self._terminated.discard(task_id)
                if replace:
                    outcome = execution.revoked(record, self.worker_name, task_id, terminated=True)
                replace = True
            self.done(record, outcome)  # before a replacement child starts: that takes an app import
            if replace:
                if (child := self._replace_child(process)) is None:
                    return
                process, conn = child
        try:
            conn.send(None)
        except OSError:
            pass
        process.join(timeout=10)
        self._children.discard(process)

    def _run_in_child(self, process: BaseProcess, conn: Connection, record: Record,
                      ) -> tuple[execution.Outcome, bool]:
        """(outcome, whether the child must be replaced)."""
        soft, hard = execution.time_limits(self.app, record)
        run = _Run(record, time.monotonic(), time.perf_counter(), soft, hard)
        clock = run.clock
        soft_sent = False
        try:
            conn.send(record)
            while True:
                if conn.poll(WATCH_INTERVAL * 4) and (outcome := _receive(conn, run)) is not None:
                    return outcome, False
                elapsed = run.elapsed(time.monotonic())
                if hard is not None and elapsed > hard:
                    exc: Exception = TimeLimitExceeded(f"task ran past its time limit of {hard:g} s; process killed")
                    return self._ended(record, exc, clock), True
                if soft is not None and not soft_sent and elapsed > soft and process.pid:
                    os.kill(process.pid, signal.SIGUSR1)
                    soft_sent = True
                if not process.is_alive():
                    raise EOFError
        except (EOFError, OSError):
            return self._ended(record, _lost(process, "the task"), clock), True

    def terminate(self, task_id: str) -> bool:
        """Kill the child process running ``task_id``; its slot starts a new child."""
        process = self._by_id.get(task_id)
        if process is None:
            return False
        self._terminated.add(task_id)
        process.kill()
        return True

    def _run_batch_in_child(self, process: BaseProcess, conn: Connection, records: list[Record],
                            ) -> tuple[list[execution.Outcome], bool]:
        """(one outcome per record, whether the child must be replaced)."""
        _soft, hard = execution.time_limits(self.app, records[0])
        run = _Run(records[0], time.monotonic(), time.perf_counter(), None, hard)
        clock = run.clock
        try:
            conn.send(records)
            while True:
                if conn.poll(WATCH_INTERVAL * 4) and (outcomes := _receive(conn, run)) is not None:
                    return outcomes, False
                if hard is not None and run.elapsed(time.monotonic()) > hard:
                    exc: Exception = TimeLimitExceeded(f"batch ran past its time limit of {hard:g} s; process killed")
                    return [self._ended(r, exc, clock) for r in records], True
                if not process.is_alive():
                    raise EOFError
        except (EOFError, OSError):
            exc = _lost(process, "a batch")
            return [self._ended(r, exc, clock) for r in records], True

    def stop(self, timeout: float | None = None) -> None:
        for _ in self._slots:
            self._queue.put(None)
        _join_within(self._slots, timeout)
        if self._children:  # still running a task past the timeout
            self._left.set()
            for process in list(self._children):
                process.kill()


POOLS: dict[str, type[Pool]] = {"threads": ThreadPool, "processes": ProcessPool, "asyncio": AsyncioPool}


def make_pool(kind: str, app: Taskq, concurrency: int, worker_name: str, app_path: str | None) -> Pool:
    try:
        return POOLS[kind](app, concurrency, worker_name, app_path)
    except KeyError:
        raise ConfigError(f"unknown pool {kind!r}; choose one of {sorted(POOLS)}") from None

