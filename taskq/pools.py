"""Execution pools: threads, processes or an asyncio loop. They only run records and report outcomes.

Every pool calls ``done(record, outcome)`` from one of its own threads; ``outcome`` is None when the
record was abandoned before it started (the worker is stopping or lost the partition), so its offset
must not be committed.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from taskq import execution
from taskq.brokers.base import Record
from taskq.errors import ConfigError

if TYPE_CHECKING:
    from taskq.app import Taskq

Done = Callable[[Record, "execution.Outcome | None"], None]
Runnable = Callable[[Record], bool]


class Pool:
    """Runs records with ``concurrency`` at once."""

    def __init__(self, app: Taskq, concurrency: int, worker_name: str, app_path: str | None = None) -> None:
        self.app = app
        self.concurrency = concurrency
        self.worker_name = worker_name
        self.app_path = app_path

    def start(self, done: Done, runnable: Runnable) -> None:
        self.done = done
        self.runnable = runnable

    def submit(self, record: Record) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop after the records already started; unstarted ones are reported abandoned."""


class ThreadPool(Pool):
    """``concurrency`` threads pulling from one queue; the default pool."""

    def start(self, done: Done, runnable: Runnable) -> None:
        super().start(done, runnable)
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"taskq-exec-{i}", daemon=True)
                         for i in range(self.concurrency)]
        for thread in self._threads:
            thread.start()

    def submit(self, record: Record) -> None:
        self._queue.put(record)

    def _loop(self) -> None:
        app, name, done, runnable, get = self.app, self.worker_name, self.done, self.runnable, self._queue.get
        while (record := get()) is not None:
            done(record, execution.run(app, record, name) if runnable(record) else None)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


class AsyncioPool(Pool):
    """One event loop thread; coroutine tasks run concurrently, plain functions in its thread executor."""

    def start(self, done: Done, runnable: Runnable) -> None:
        super().start(done, runnable)
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="taskq-asyncio", daemon=True)
        self._thread.start()

    def submit(self, record: Record) -> None:
        self._loop.call_soon_threadsafe(self._spawn, record)

    def _spawn(self, record: Record) -> None:
        task = self._loop.create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, record: Record) -> None:
        if not self.runnable(record):
            self.done(record, None)
            return
        prepared = execution.prepare(self.app, record)
        if not isinstance(prepared, execution.Outcome) and not prepared[1].is_async:
            outcome = await self._loop.run_in_executor(None, execution.run, self.app, record, self.worker_name)
        else:
            outcome = await execution.run_async(self.app, record, self.worker_name)
        self.done(record, outcome)

    def stop(self) -> None:
        async def drain() -> None:
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


_child_app: Any = None


def _init_child(app_path: str) -> None:
    global _child_app  # noqa: PLW0603 - one app per child process, set once by the pool initializer
    _child_app = load_app(app_path)


def _run_in_child(record: Record, worker_name: str) -> execution.Outcome:
    return execution.run(_child_app, record, f"{worker_name}/{os.getpid()}")


class ProcessPool(Pool):
    """``concurrency`` child processes, each importing the app; for CPU-bound tasks."""

    def start(self, done: Done, runnable: Runnable) -> None:
        super().start(done, runnable)
        if not self.app_path:
            raise ConfigError("the processes pool needs the app's import path (taskq worker -A module:app)")
        import multiprocessing

        self._executor = ProcessPoolExecutor(self.concurrency, multiprocessing.get_context("spawn"),
                                             initializer=_init_child, initargs=(self.app_path,))

    def submit(self, record: Record) -> None:
        if not self.runnable(record):
            self.done(record, None)
            return
        future = self._executor.submit(_run_in_child, record, self.worker_name)
        future.add_done_callback(lambda f, r=record: self._finished(r, f))

    def _finished(self, record: Record, future: Future[execution.Outcome]) -> None:
        if future.cancelled():
            self.done(record, None)
            return
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - a child died: the message is poison or the host is sick
            outcome = execution.reject(record, exc)
        self.done(record, outcome)

    def stop(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


POOLS: dict[str, type[Pool]] = {"threads": ThreadPool, "processes": ProcessPool, "asyncio": AsyncioPool}


def make_pool(kind: str, app: Taskq, concurrency: int, worker_name: str, app_path: str | None) -> Pool:
    try:
        return POOLS[kind](app, concurrency, worker_name, app_path)
    except KeyError:
        raise ConfigError(f"unknown pool {kind!r}; choose one of {sorted(POOLS)}") from None


def load_app(path: str) -> Taskq:
    """``package.module`` or ``package.module:attr`` -> the Taskq app there."""
    from taskq.app import Taskq

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from exc
    if attr:
        app = getattr(module, attr, None)
    else:
        app = getattr(module, "app", None) or next(
            (v for v in vars(module).values() if isinstance(v, Taskq)), None)
    if not isinstance(app, Taskq):
        raise ConfigError(f"no Taskq app found at {path!r} (use module:attribute)")
    return app
