"""A worker started with a backlog: its first tasks start before a whole batch is decoded, and the result
store's connections are open before the first results need them."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import Taskq
from taskq.results.redis import RedisBackend
from taskq.worker.consumer import FIRST_BATCH
from tests.support import wait_results, wait_until, worker_thread

WAITING = 300


def test_an_idle_worker_takes_a_small_batch_first_then_twice_what_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    app = Taskq("rampup", local_path=str(tmp_path / "q.db"), topic_prefix=f"rampup{unique}.")
    gate = threading.Event()

    @app.task(name="held", partitions=1)
    def held(n: int) -> int:
        gate.wait(60)
        return n

    asked: list[int] = []
    make_consumer = app.broker.consumer

    def recording(*args: Any, **kwargs: Any) -> Any:
        consumer = make_consumer(*args, **kwargs)
        consume = consumer.consume

        def counted(max_records: int, timeout: float) -> Any:
            records = consume(max_records, timeout)
            if records:
                asked.append(max_records)
            return records
        consumer.consume = counted
        return consumer

    monkeypatch.setattr(app.broker, "consumer", recording)
    ids = [held.delay(i).id for i in range(WAITING)]
    app.flush()
    try:
        with worker_thread(app, concurrency=2, batch_size=1000) as (worker, _):
            # nothing finishes while the gate is shut: each take asks for twice the records in flight
            wait_until(lambda: worker._in_flight == WAITING, 30, "the worker to take the backlog")
            assert asked[:3] == [FIRST_BATCH, 2 * FIRST_BATCH, 2 * (FIRST_BATCH + 2 * FIRST_BATCH)]
            gate.set()
            results = wait_results(app, ids, 60)
            assert [r.result if r else None for r in results] == list(range(WAITING))
    finally:
        gate.set()
        app.close()


@pytest.mark.redis
def test_open_connections_opens_them_ahead_and_shrugs_off_an_unreachable_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    watcher = redis.Redis.from_url(redis_url)
    try:
        before = len(watcher.client_list())
        backend.open_connections(2)
        assert len(watcher.client_list()) == before + 2  # open on the server, before any command
        backend.store_many([])
        assert backend.get_many(["none-such"]) == [None]
        assert len(watcher.client_list()) == before + 2  # and used again, not opened anew
    finally:
        backend.close()
        watcher.close()
    RedisBackend("redis://127.0.0.1:1/0", connect_timeout=0.5).open_connections(2)  # nothing listens there


def test_the_broker_is_made_while_another_thread_makes_the_result_backend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker makes the backend (importing its client library) beside its topic check, which needs
    the broker: making one must not wait for the other."""
    app = Taskq("locks", local_path=str(tmp_path / "q.db"))
    making, release = threading.Event(), threading.Event()
    make_backend = app._make_backend

    def slow_backend() -> Any:
        making.set()
        release.wait(60)
        return make_backend()

    monkeypatch.setattr(app, "_make_backend", slow_backend)
    backend_thread = threading.Thread(target=lambda: app.backend, daemon=True)
    backend_thread.start()
    try:
        assert making.wait(10)
        got: list[object] = []
        broker_thread = threading.Thread(target=lambda: got.append(app.broker), daemon=True)
        broker_thread.start()
        broker_thread.join(10)
        assert got and not release.is_set()  # made while the backend was still being made
    finally:
        release.set()
        backend_thread.join(10)
        app.close()
    assert app._backend is not None


def test_a_result_store_that_never_answers_does_not_hold_up_the_start(tmp_path: Path) -> None:
    """The connections opened ahead wait up to the socket timeout (30 s here) on a Redis that accepted
    the TCP connection and says nothing; the worker polls its broker meanwhile."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing ever reads or answers
    port = silent.getsockname()[1]
    app = Taskq("silent", local_path=str(tmp_path / "q.db"), backend=f"redis://127.0.0.1:{port}/0",
                connect_timeout=1)

    @app.task(name="idle")
    def idle() -> None:
        return None

    try:
        started = time.monotonic()
        with worker_thread(app, concurrency=1, stop_timeout=5.0) as (worker, _):
            assert time.monotonic() - started < 15  # ready long before the 30 s socket timeout
            assert worker.ready.is_set()
    finally:
        app.close()
        silent.close()
