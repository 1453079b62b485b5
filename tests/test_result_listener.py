"""Redis backend: every waiting get() of a process shares one pub/sub connection (real Redis)."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest
import redis
from services import RedisServer  # scripts/services.py, on the path through tests/conftest.py

from taskq.errors import BackendError
from taskq.results.base import STARTED, SUCCESS, ResultRecord
from taskq.results.redis import RESULT_PREFIX, RedisBackend


def _pubsub_clients(client: redis.Redis) -> int:
    return len(client.client_list(_type="pubsub"))


def _wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_waits_share_one_connection_and_unsubscribe(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    before = _pubsub_clients(admin)
    ids = [uuid.uuid4().hex for _ in range(20)]
    got: dict[str, ResultRecord | None] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, backend.wait(i, 30))) for i in ids]
    try:
        for t in threads:
            t.start()
        channels = [RESULT_PREFIX + i for i in ids]
        _wait_until(lambda: all(n == 1 for _, n in admin.pubsub_numsub(*channels)), 30, "all 20 subscriptions")
        assert _pubsub_clients(admin) == before + 1  # twenty waiters, one pub/sub connection
        backend.store_many([ResultRecord(i, STARTED) for i in ids])  # not ready: nobody returns
        time.sleep(0.2)
        assert not got
        backend.store_many([ResultRecord(i, SUCCESS, n) for n, i in enumerate(ids)])
        for t in threads:
            t.join(30)
        assert {i: r.result if r else None for i, r in got.items()} == {i: n for n, i in enumerate(ids)}
        _wait_until(lambda: all(n == 0 for _, n in admin.pubsub_numsub(*channels)), 30, "unsubscribes")
        assert _pubsub_clients(admin) == before + 1  # kept for the next get()
    finally:
        backend.close()
        admin.close()


def test_stored_before_wait_and_timeout(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    try:
        done = uuid.uuid4().hex
        backend.store_many([ResultRecord(done, SUCCESS, "early")])
        record = backend.wait(done, 5)
        assert record is not None and record.result == "early"
        started = time.monotonic()
        assert backend.wait(uuid.uuid4().hex, 0.3) is None
        assert time.monotonic() - started >= 0.3
    finally:
        backend.close()


def test_wait_survives_a_killed_connection(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    task_id = uuid.uuid4().hex
    channel = RESULT_PREFIX + task_id
    got: list[ResultRecord | None] = []
    waiter = threading.Thread(target=lambda: got.append(backend.wait(task_id, 60)))
    try:
        waiter.start()
        _wait_until(lambda: admin.pubsub_numsub(channel)[0][1] == 1, 30, "the subscription")
        admin.client_kill_filter(_type="pubsub", skipme=True)
        # the listener reconnects and subscribes the channel again
        _wait_until(lambda: admin.pubsub_numsub(channel)[0][1] == 1, 30, "the subscription again")
        backend.store_many([ResultRecord(task_id, SUCCESS, 42)])
        waiter.join(30)
        assert got and got[0] is not None and got[0].result == 42
    finally:
        backend.close()
        admin.close()


def test_idle_listener_stops_when_its_connection_fails(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        first = uuid.uuid4().hex
        backend.store_many([ResultRecord(first, SUCCESS, 1)])
        assert backend.wait(first, 10) is not None
        listener = backend.listener()
        assert listener.alive
        admin.client_kill_filter(_type="pubsub", skipme=True)
        # nobody waits: the thread ends instead of reconnecting for ever
        _wait_until(lambda: not listener.alive, 30, "the idle listener to stop")
        assert _pubsub_clients(admin) == 0
        # the next wait builds a new listener and still sees its result
        second = uuid.uuid4().hex
        done: list[ResultRecord | None] = []
        waiter = threading.Thread(target=lambda: done.append(backend.wait(second, 60)))
        waiter.start()
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + second)[0][1] == 1, 30, "the new subscription")
        backend.store_many([ResultRecord(second, SUCCESS, 2)])
        waiter.join(30)
        assert done and done[0] is not None and done[0].result == 2
        assert backend.listener() is not listener
    finally:
        backend.close()
        admin.close()


def test_a_final_result_arrives_with_its_message(redis_url: str) -> None:
    """A small final record is published whole: the waiting get() returns it without reading the key again;
    a large one is published by status and read."""
    from taskq.results.redis import PUBLISH_RECORD_MAX

    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    reads: list[str] = []
    real_read = backend._read_waited

    def counting_read(task_id: str) -> ResultRecord | None:
        record = real_read(task_id)
        reads.append(task_id)  # once the read is done: a store after this is not seen by it
        return record

    backend._read_waited = counting_read  # type: ignore[method-assign]
    try:
        for value in ("small", "x" * (PUBLISH_RECORD_MAX + 1)):
            task_id = uuid.uuid4().hex
            got: list[ResultRecord | None] = []
            waiter = threading.Thread(target=lambda: got.append(backend.wait(task_id, 30)))
            reads.clear()
            waiter.start()
            _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1 and reads, 30,
                        "the waiter to subscribe and read once")
            backend.store_many([ResultRecord(task_id, SUCCESS, value)])
            waiter.join(30)
            assert got and got[0] is not None and got[0].result == value
            assert len(reads) == (1 if value == "small" else 2), reads
    finally:
        backend.close()
        admin.close()


def test_more_callers_than_a_hundred_connections_all_get_their_result(redis_url: str) -> None:
    """The backend's pool has no cap below what Redis accepts (redis-py 8 caps a pool at 100, and the 101st
    concurrent caller failed with "Too many connections"): with 150 callers busy in a command right now,
    one more store and get() still go through."""
    backend = RedisBackend(redis_url)
    busy = [threading.Thread(target=backend.client.call, args=("BLPOP", f"nothing-{uuid.uuid4().hex}", 3))
            for _ in range(150)]
    try:
        for thread in busy:
            thread.start()
        _wait_until(lambda: backend.client.call("INFO", "clients").count(b"blocked_clients:150") == 1, 10,
                    "150 callers blocked in BLPOP")
        task_id = uuid.uuid4().hex
        backend.store_many([ResultRecord(task_id, SUCCESS, "one more")])
        record = backend.wait(task_id, 10)
        assert record is not None and record.result == "one more"
    finally:
        for thread in busy:
            thread.join(10)
        backend.close()


def test_a_waiting_get_rides_out_a_redis_restart(own_redis: RedisServer) -> None:
    """Redis restarts while a get() waits: the wait goes on (the listener subscribes again, the key is read
    again) instead of failing on the read that found Redis down; an outage that outlasts the wait's timeout
    ends it with the backend's error, at the timeout."""
    backend = RedisBackend(own_redis.url)
    task_id = uuid.uuid4().hex
    got: list[object] = []

    def wait(timeout: float) -> None:
        started = time.monotonic()
        try:
            got.append(backend.wait(task_id, timeout))
        except BackendError as exc:
            got.append(exc)
        got.append(time.monotonic() - started)

    try:
        waiter = threading.Thread(target=wait, args=(60,))
        waiter.start()
        admin = redis.Redis.from_url(own_redis.url)
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1, 30, "the subscription")
        admin.close()
        own_redis.stop()
        time.sleep(1.0)  # the waiter was woken and found Redis down
        own_redis.start(port=own_redis.port)
        admin = redis.Redis.from_url(own_redis.url)
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1 or not waiter.is_alive(), 30,
                    "the subscription again")
        admin.close()
        backend.store_many([ResultRecord(task_id, SUCCESS, "after the restart")])
        waiter.join(30)
        assert isinstance(got[0], ResultRecord) and got[0].result == "after the restart", got

        got.clear()
        task_id = uuid.uuid4().hex
        waiter = threading.Thread(target=wait, args=(3,))
        waiter.start()
        time.sleep(0.5)
        own_redis.stop()
        waiter.join(30)
        assert isinstance(got[0], BackendError), got
        assert 3 <= got[1] < 6, got  # waited its timeout, then said why it has no answer
    finally:
        backend.close()


def test_a_stopped_redis_does_not_hold_a_get_past_its_timeout(own_redis: RedisServer) -> None:
    """Redis frozen (SIGSTOP: a grey failure, no connection error) before and during a wait: the wait ends
    about its timeout with the backend's error, not after the client's 30 s socket timeout."""
    backend = RedisBackend(own_redis.url)
    warm = uuid.uuid4().hex
    backend.store_many([ResultRecord(warm, SUCCESS, 1)])
    assert backend.wait(warm, 5) is not None  # the listener and a pooled connection exist
    try:
        for freeze_after in (0.0, 0.5):
            got: list[object] = []

            def wait() -> None:
                try:
                    got.append(backend.wait(uuid.uuid4().hex, 1.5))
                except BackendError as exc:
                    got.append(exc)

            started = time.monotonic()
            waiter = threading.Thread(target=wait)
            if not freeze_after:
                own_redis.kill(signal.SIGSTOP)
            waiter.start()
            if freeze_after:
                time.sleep(freeze_after)
                own_redis.kill(signal.SIGSTOP)
            waiter.join(60)
            took = time.monotonic() - started
            own_redis.kill(signal.SIGCONT)
            assert isinstance(got[0], BackendError), got
            assert took < 4, (freeze_after, took)
    finally:
        own_redis.kill(signal.SIGCONT)
        backend.close()


def test_a_stream_rides_out_a_redis_restart_and_a_stopped_redis(own_redis: RedisServer) -> None:
    """stream() (LLM tokens) goes on across a Redis restart that kept the data, and a frozen Redis ends it
    about its timeout with the backend's error instead of 30 s later."""
    backend = RedisBackend(own_redis.url)
    admin = redis.Redis.from_url(own_redis.url)
    task_id = uuid.uuid4().hex
    got: list[object] = []

    def read(tid: str, timeout: float) -> None:
        started = time.monotonic()
        try:
            got.extend(backend.stream(tid, timeout))
        except BackendError as exc:
            got.append(exc)
        got.append(time.monotonic() - started)

    try:
        reader = threading.Thread(target=read, args=(task_id, 60))
        reader.start()
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1, 30, "the subscription")
        backend.append_chunk(task_id, "a")
        _wait_until(lambda: got == ["a"], 30, "the first token")
        admin.save()  # the restart keeps the tokens so far (dump.rdb)
        admin.close()
        own_redis.stop()
        time.sleep(1.0)
        own_redis.start(port=own_redis.port)
        admin = redis.Redis.from_url(own_redis.url)
        backend.append_chunk(task_id, "b")
        backend.store_many([ResultRecord(task_id, SUCCESS, "ab")])
        reader.join(30)
        assert got[:-1] == ["a", "b"], got

        got.clear()
        reader = threading.Thread(target=read, args=(uuid.uuid4().hex, 1.5))
        reader.start()
        time.sleep(0.5)
        own_redis.kill(signal.SIGSTOP)
        reader.join(60)
        own_redis.kill(signal.SIGCONT)
        assert isinstance(got[0], BackendError) and got[1] < 4, got
    finally:
        own_redis.kill(signal.SIGCONT)
        admin.close()
        backend.close()


def test_the_first_wait_of_a_process_on_a_stopped_redis_ends_at_its_timeout(own_redis: RedisServer) -> None:
    """No subscription yet (the first get() or stream() of a process) and Redis frozen: subscribing ends about
    the wait's timeout with the backend's error, not after the 30 s socket timeout of the worker's writes."""
    try:
        for call in (lambda b: b.wait(uuid.uuid4().hex, 1.5), lambda b: list(b.stream(uuid.uuid4().hex, 1.5))):
            backend = RedisBackend(own_redis.url)
            own_redis.kill(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(BackendError):
                call(backend)
            took = time.monotonic() - started
            own_redis.kill(signal.SIGCONT)
            backend.close()
            assert took < 4, took
    finally:
        own_redis.kill(signal.SIGCONT)


def test_a_message_another_client_publishes_on_the_channel_is_not_the_result(redis_url: str) -> None:
    """Whatever another client publishes on a task's channel (garbage, or a record of another task) wakes
    the waiter at most: get() returns the task's own result, and the listener serves every other waiter."""
    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    task_id = uuid.uuid4().hex
    got: list[ResultRecord | None] = []
    waiter = threading.Thread(target=lambda: got.append(backend.wait(task_id, 30)))
    try:
        waiter.start()
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1, 30, "the subscription")
        for noise in (b"{not json", b"[1]", b'{"id": "someone-else", "status": "SUCCESS", "result": "forged"}'):
            admin.publish(RESULT_PREFIX + task_id, noise)
        time.sleep(0.3)
        assert not got, got
        backend.store_many([ResultRecord(task_id, SUCCESS, "own")])
        waiter.join(30)
        assert got and got[0] is not None and got[0].result == "own"
        other = uuid.uuid4().hex
        backend.store_many([ResultRecord(other, SUCCESS, "next")])
        record = backend.wait(other, 5)
        assert record is not None and record.result == "next"
    finally:
        backend.close()
        admin.close()


def test_a_wait_that_could_not_subscribe_leaves_nothing_behind(own_redis: RedisServer) -> None:
    """A get() that starts while Redis is down fails at once; it must not stay registered with the listener
    (the listener would count it as waiting for ever: never idle, reconnecting on every later outage)."""
    backend = RedisBackend(own_redis.url)
    task_id = uuid.uuid4().hex
    got: list[ResultRecord | None] = []
    waiter = threading.Thread(target=lambda: got.append(backend.wait(task_id, 60)))
    try:
        waiter.start()
        admin = redis.Redis.from_url(own_redis.url)
        _wait_until(lambda: admin.pubsub_numsub(RESULT_PREFIX + task_id)[0][1] == 1, 30, "the subscription")
        admin.close()
        listener = backend.listener()
        own_redis.stop()
        with pytest.raises(BackendError):
            backend.wait(uuid.uuid4().hex, 1)  # Redis is down as it starts: refused at once
        own_redis.start(port=own_redis.port)
        backend.store_many([ResultRecord(task_id, SUCCESS, "kept waiting")])
        waiter.join(30)
        assert got and got[0] is not None and got[0].result == "kept waiting"
        own_redis.stop()  # nobody waits now: the listener stops instead of reconnecting for ever
        _wait_until(lambda: not listener.alive, 30, "the idle listener to stop")
    finally:
        backend.close()


def test_a_worker_store_on_a_stopped_redis_gives_up_at_the_outage_timeout(own_redis: RedisServer) -> None:
    """The worker's writes read through a socket timeout of 30 s: with Redis frozen and outage_timeout=3 the
    finisher's bounded retry gave up only after 30 s. The app's backend now reads within the outage bound."""
    from taskq import Taskq
    from taskq.errors import OutageTooLong
    from taskq.worker.sender import retrying

    app = Taskq("frozen", broker="kafka://127.0.0.1:1", backend=own_redis.url, outage_timeout=3)
    records = [ResultRecord(uuid.uuid4().hex, SUCCESS, 1)]
    app.backend.store_many(records)  # connected
    own_redis.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(OutageTooLong):
            retrying("store results", lambda: app.backend.store_many(records), app.settings.outage_timeout)
        assert time.monotonic() - started < 10
    finally:
        own_redis.kill(signal.SIGCONT)
        app.close()
