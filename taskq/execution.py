"""Executing one message: a pure function from a record to an :class:`Outcome`.

No broker and no result store here: the worker decides what to write and commit from the outcome,
which keeps this easy to test and lets thread, process and asyncio pools share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from taskq.brokers.base import Record
from taskq.errors import MessageRejected, NotRegistered, Reject, Replace, Retry, SerializationError, TimeLimitExceeded
from taskq.message import H_ID, H_TASK, MalformedMessage, TaskMessage
from taskq.results.base import FAILURE, REVOKED, SUCCESS, ResultRecord
from taskq.task import Request, Task

if TYPE_CHECKING:
    from taskq.app import Taskq

_THREAD = threading.local()  # per pool thread: the event loop for coroutine tasks run outside the asyncio pool


class Kind(Enum):
    SUCCESS = "success"  # result stored, offset done
    RETRY = "retry"  # message re-sent through a delay tier, offset done
    DEAD = "dead"  # task failed for good: FAILURE stored and the message dead-lettered
    REJECTED = "rejected"  # poison (unknown task, undecodable): dead-lettered, FAILURE stored if it has an id
    REVOKED = "revoked"  # revoked: not run (or terminated), REVOKED stored, offset done


@dataclass(slots=True)
class Outcome:
    """What happened to one record, and what the worker must make durable before committing it."""

    record: Record
    kind: Kind
    result: ResultRecord | None = None  # to store (SUCCESS, FAILURE, RETRY state)
    message: TaskMessage | None = None  # for RETRY: the message to send again (attempts bumped)
    retry_delay: float = 0.0
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    runtime: float = 0.0
    replaced: dict[str, Any] | None = None  # SUCCESS by Task.replace: the workflow sent in its place


def reject(record: Record, exc: BaseException) -> Outcome:
    """A message that cannot run: dead-lettered, and a FAILURE stored when its id header is readable,
    so that the caller's ``get()`` raises :class:`MessageRejected` at once instead of waiting."""
    result = None
    raw_id = record.header(H_ID)
    try:
        task_id = raw_id.decode() if raw_id else ""
    except UnicodeDecodeError:
        task_id = ""
    if task_id:
        raw_task = record.header(H_TASK)
        error = f"{qualname(MessageRejected(exc))}: {exc} (the message was dead-lettered: see taskq dlq ls)"
        result = ResultRecord(task_id, FAILURE, None, error, None,
                              raw_task.decode(errors="replace") if raw_task else None, None, 0, time.time())
    return Outcome(record, Kind.REJECTED, result, error_type=qualname(exc), error_message=str(exc),
                   error_traceback="")


def revoked(record: Record, worker: str, task_id: str, terminated: bool = False) -> Outcome:
    """The outcome of a revoked record: state REVOKED, nothing else to send."""
    name = record.header(H_TASK)
    note = "terminated while running" if terminated else "revoked before it started"
    result = ResultRecord(task_id, REVOKED, None, f"taskq.errors.TaskRevoked: {note}", None,
                          name.decode(errors="replace") if name else None, worker, 0, time.time())
    return Outcome(record, Kind.REVOKED, result, error_type="taskq.errors.TaskRevoked", error_message=note)


def prepare(app: Taskq, record: Record) -> tuple[TaskMessage, Task] | Outcome:
    """Decode and look up the task; an :class:`Outcome` (rejected) when that is impossible."""
    try:
        message = TaskMessage.decode(record, app.serializers)
        if message.canvas is not None:
            from taskq.flow import problem  # flow imports this module

            if (bad := problem(message.canvas)) is not None:
                raise MalformedMessage(f"bad header 'canvas': {bad}")
        return message, app.get_task(message.task)
    except (SerializationError, NotRegistered) as exc:
        return reject(record, exc)


def bind_request(task: Task, message: TaskMessage, record: Record) -> Request:
    request = Request(message.id, message.task, message.args, message.kwargs, message.key, message.attempts,
                      message.headers, record.topic, record.partition, record.offset, message.root_id,
                      message.parent_id)
    task._request.set(request)
    task.app.current_request.set(request)
    return request


def conclude(task: Task, message: TaskMessage, record: Record, worker: str, started: float,
             value: Any = None, exc: BaseException | None = None, meta: dict[str, Any] | None = None) -> Outcome:
    """Classify a finished run into success, retry or dead; ``meta`` (``request.meta``) goes with the result."""
    meta = meta or {}
    now = time.time()
    runtime = time.perf_counter() - started
    attempts = message.attempts + 1
    if isinstance(exc, Replace):  # its result comes later, from the workflow: nothing stored now
        return Outcome(record, Kind.SUCCESS, None, runtime=runtime, replaced=exc.element)
    if exc is None:
        result = ResultRecord(message.id, SUCCESS, value, task=message.task, worker=worker, attempts=attempts,
                              date_done=now, meta=meta, root_id=message.root, parent_id=message.parent_id)
        try:
            result.encode()
        except (TypeError, ValueError) as err:
            exc = SerializationError(f"result of {message.task} cannot be serialized: {err}")
        else:
            return Outcome(record, Kind.SUCCESS, result, runtime=runtime)
    policy = task.retry_policy
    countdown = None
    cause: BaseException = exc
    if isinstance(exc, Retry):
        cause = exc.exc or exc
        countdown = exc.countdown
        retry = message.attempts < policy.max_retries
    else:
        retry = not isinstance(exc, Reject) and policy.should_retry(exc, message.attempts)
    error = f"{qualname(cause)}: {cause}"
    tb = "".join(traceback.format_exception(cause))
    if retry:
        delay = policy.delay(message.attempts, countdown)
        state = ResultRecord(message.id, "RETRY", None, error, tb, message.task, worker, attempts, None, meta,
                             root_id=message.root, parent_id=message.parent_id)
        return Outcome(record, Kind.RETRY, state, message.retried(now, now + delay), delay,
                       qualname(cause), str(cause), tb, runtime)
    result = ResultRecord(message.id, FAILURE, None, error, tb, message.task, worker, attempts, now, meta,
                          root_id=message.root, parent_id=message.parent_id)
    return Outcome(record, Kind.DEAD, result, None, 0.0, qualname(cause), str(cause), tb, runtime)


def ended(app: Taskq, record: Record, worker: str, exc: BaseException, started: float) -> Outcome:
    """The outcome of a run the pool had to end (hard time limit, lost process)."""
    prepared = prepare(app, record)
    if isinstance(prepared, Outcome):
        return prepared
    message, task = prepared
    return conclude(task, message, record, worker, started, exc=exc)


def time_limits(app: Taskq, record: Record) -> tuple[float | None, float | None]:
    """(soft, hard) time limits of the record's task, without decoding its body."""
    name = record.header(H_TASK)
    task = app.tasks.get(name.decode(errors="replace")) if name else None
    return (task.soft_time_limit, task.time_limit) if task else (None, None)


def run(app: Taskq, record: Record, worker: str) -> Outcome:
    """Run one record's task in this thread.

    Whatever the task raises ends it as an outcome, ``SystemExit`` and ``KeyboardInterrupt`` included: a
    worker stops on SIGINT and SIGTERM through its handlers (pool processes ignore both), so Ctrl-C never
    raises in a task, and a ``KeyboardInterrupt`` there is the task's own.
    """
    prepared = prepare(app, record)
    if isinstance(prepared, Outcome):
        return prepared
    message, task = prepared
    if task.is_batch:
        return _run_batch(task, [(message, record)], worker)[0]
    request = bind_request(task, message, record)
    started = time.perf_counter()
    try:
        if task.rate is not None:  # delayed, not dropped: wait for this run's turn across all workers
            delay = task.limiter.reserve(task.rate_limit_name(message.key), task.rate)
            if delay > 0:
                with outside_time_limit():
                    time.sleep(delay)
        value = task.fn(task, *message.args, **message.kwargs) if task.bind else task.fn(
            *message.args, **message.kwargs)
        if task.is_async:  # a coroutine task outside the asyncio pool: this thread's own loop runs it
            value = _thread_loop().run_until_complete(value)
    except BaseException as exc:  # noqa: BLE001 - every task error (SystemExit too) becomes an outcome
        return conclude(task, message, record, worker, started, exc=exc, meta=request.meta)
    finally:
        task._request.set(None)
        task.app.current_request.set(None)
    return conclude(task, message, record, worker, started, value, meta=request.meta)


def _thread_loop() -> asyncio.AbstractEventLoop:
    """One event loop per pool thread, kept for the thread's life (clients bound to it stay usable)."""
    loop = getattr(_THREAD, "loop", None)
    if loop is None or loop.is_closed():
        loop = _THREAD.loop = asyncio.new_event_loop()
    return loop


def run_batch(app: Taskq, records: list[Record], worker: str) -> list[Outcome]:
    """Run a batch task once for ``records`` (all of one task); one outcome per record, in order.

    The task gets a list of :class:`Request`; it returns one result per request (or None for all).
    An exception, or a list of the wrong length, concludes every record with that error (each then
    retries or fails by its own attempt count). Undecodable records are rejected on their own.
    """
    outcomes: list[Outcome | None] = []
    runnable: dict[str, list[tuple[int, TaskMessage, Record]]] = {}
    tasks: dict[str, Task] = {}
    for i, record in enumerate(records):
        prepared = prepare(app, record)
        if isinstance(prepared, Outcome):
            outcomes.append(prepared)
            continue
        message, task = prepared
        outcomes.append(None)
        runnable.setdefault(task.name, []).append((i, message, record))
        tasks[task.name] = task
    for name, items in runnable.items():
        task = tasks[name]
        done = (_run_batch(task, [(m, r) for _, m, r in items], worker) if task.is_batch
                else [run(app, r, worker) for _, _, r in items])
        for (i, _, _), outcome in zip(items, done):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _run_batch(task: Task, items: list[tuple[TaskMessage, Record]], worker: str) -> list[Outcome]:
    requests = [Request(m.id, m.task, m.args, m.kwargs, m.key, m.attempts, m.headers, r.topic, r.partition,
                        r.offset, m.root_id, m.parent_id) for m, r in items]
    started = time.perf_counter()
    try:
        values = task.fn(task, requests) if task.bind else task.fn(requests)
        if values is None:
            values = [None] * len(requests)
        values = list(values)
        if len(values) != len(requests):
            raise TypeError(f"batch task {task.name} returned {len(values)} results for {len(requests)} requests")
    except BaseException as exc:  # noqa: BLE001 - every task error (SystemExit too) becomes an outcome
        return [conclude(task, m, r, worker, started, exc=exc) for m, r in items]
    return [conclude(task, m, r, worker, started, v) for (m, r), v in zip(items, values)]


async def run_async(app: Taskq, record: Record, worker: str, time_limit: float | None = None) -> Outcome:
    """Run one record's coroutine task on the running event loop, cancelled past ``time_limit`` seconds.

    The time limit starts once the task's rate-limit turn has come (a run waiting its turn is delayed,
    not failed). A ``CancelledError`` raised by the task's own code is a failure like any other; a
    cancellation of this run from outside (``terminate``) propagates.
    """
    prepared = prepare(app, record)
    if isinstance(prepared, Outcome):
        return prepared
    message, task = prepared
    started = time.perf_counter()
    request = bind_request(task, message, record)
    limit: asyncio.Timeout | None = None
    try:
        if task.rate is not None:
            await task.limiter.wait_async(task.rate_limit_name(message.key), task.rate)
        coro = task.fn(task, *message.args, **message.kwargs) if task.bind else task.fn(
            *message.args, **message.kwargs)
        limit = asyncio.timeout(time_limit)  # its deadline counts from now
        _time_limit.set(limit)
        async with limit:
            value = await coro
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the pool cancels this run (terminate): it reports the outcome
        return conclude(task, message, record, worker, started, exc=exc, meta=request.meta)  # the task's own
    except BaseException as exc:  # noqa: BLE001 - every task error becomes an outcome
        error = exc if limit is None or not limit.expired() else TimeLimitExceeded(
            f"task ran past its time limit of {time_limit:g} s and was cancelled")
        return conclude(task, message, record, worker, started, exc=error, meta=request.meta)
    return conclude(task, message, record, worker, started, value, meta=request.meta)


_time_limit: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar("taskq_time_limit",
                                                                                    default=None)


#: Set by the threads and processes pools around a run they time: told True when the run starts waiting
#: for a rate-limit turn and False when the turn comes, so that they leave the wait out of its time limit.
turn_waits: contextvars.ContextVar[Callable[[bool], None] | None] = contextvars.ContextVar("taskq_turn_waits",
                                                                                       default=None)


@contextlib.contextmanager
def outside_time_limit() -> Iterator[None]:
    """A wait for a rate-limit turn inside a run timed by the threads or processes pool: not counted."""
    report = turn_waits.get()
    if report is not None:
        report(True)
    try:
        yield
    finally:
        if report is not None:
            report(False)


async def sleep_outside_time_limit(seconds: float) -> None:
    """Sleep without counting the time against the running task's time limit, in every pool: a wait for
    a rate-limit turn (a provider's RPM/TPM) delays a run, it must not fail it."""
    limit = _time_limit.get()
    deadline = None if limit is None else limit.when()
    if limit is not None and deadline is not None and not limit.expired():
        limit.reschedule(deadline + seconds)
    with outside_time_limit():
        await asyncio.sleep(seconds)


def qualname(exc: BaseException) -> str:
    """``module.Type`` of an exception (``Type`` for builtins), as results and dead letters name it."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
