"""Bad input: poison messages, unserializable arguments, unreachable services, bad configuration.

Message tests run on the embedded local broker and on real Kafka + Redis.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import BackendError, BrokerError, ConfigError, MessageRejected, SerializationError, Taskq
from taskq.brokers.base import Record
from taskq.message import TaskMessage
from tests.support import ROOT, read_records, start_worker, worker_thread

KAFKA = pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis])
WAIT = {"local": 15.0, "kafka": 60.0}


@pytest.fixture(params=["local", KAFKA])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Taskq]:
    """A fresh app (unique name, hence unique group) on the local broker or on Kafka + Redis."""
    if kind == "local":
        a = Taskq(f"bad{unique}", local_path=str(tmp_path / "q.db"))
    else:
        a = Taskq(f"bad{unique}", broker=request.getfixturevalue("kafka_url"),
                  backend=request.getfixturevalue("redis_url"))

    @a.task(name=f"bad{unique}.echo")
    def echo(value: object) -> object:
        return value

    yield a
    a.close()


def echo_task(app: Taskq):  # noqa: ANN201
    [task] = [t for name, t in app.tasks.items() if name.endswith(".echo")]
    return task


def produce_raw(app: Taskq, topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
                ) -> None:
    producer = app.broker.producer()
    errors: list[BaseException] = []

    def report(err: BaseException | None, _rec: Record | None) -> None:
        if err is not None:
            errors.append(err)

    for key, value, headers in records:
        producer.produce(topic, key, value, headers, on_delivery=report)
    assert producer.flush(30) == 0
    assert not errors, errors


def valid_message(app: Taskq, task_name: str, task_id: str, args: list[object]) -> tuple[bytes, list[tuple[str, bytes]]]:
    return TaskMessage(task_id, task_name, args, {}, b"k").encode(app.serializers)


# --------------------------------------------------------------------------- (a) unknown task


def test_unknown_task_is_dead_lettered_and_worker_continues(app: Taskq, kind: str) -> None:
    echo = echo_task(app)
    app.ensure_topic(echo.topic, echo.partitions)
    value, headers = valid_message(app, "no.such.task", "poison-unknown", [1])
    produce_raw(app, echo.topic, [(b"same-key", value, headers)])
    with worker_thread(app, concurrency=4, forward_delayed=False) as (worker, _):
        after = echo.apply_async(("still alive",), key="same-key")  # same partition, after the poison
        assert after.get(timeout=WAIT[kind]) == "still alive"
    assert worker.stats.rejected == 1 and worker.stats.succeeded == 1
    letters = read_records(app, app.dlq_topic(echo.topic), 1, WAIT[kind])
    assert len(letters) == 1
    letter = letters[0]
    assert letter.header("dead-reason") == b"rejected"
    assert b"NotRegistered" in (letter.header("error-type") or b"")
    assert b"no.such.task" in (letter.header("error-message") or b"")
    assert letter.header("id") == b"poison-unknown"
    assert letter.header("original-topic") == echo.topic.encode()
    assert letter.key == b"same-key" and letter.value == value
    # the caller's get() raises at once with the reason instead of waiting (a FAILURE stored for a readable id)
    with pytest.raises(MessageRejected, match="no.such.task"):
        app.AsyncResult("poison-unknown").get(timeout=1)
    # the poison and the valid task are both committed
    partition = letter.header("original-partition")
    assert partition is not None
    high = watermarks(app, echo.topic)[int(partition)][1]
    assert app.broker.committed(app.group, echo.topic).get(int(partition)) == high == 2


# --------------------------------------------------------------------------- (b) malformed


BAD_CANVAS = [b"not json", b"[]", b'{"chain": "x"}', b'{"chain": [{"bogus": 1}]}', b'{"chain": [5]}',
              b'{"chain": [{"task": "t", "args": []}]}', b'{"chord": {"id": "c"}}', b'{"link": [{"chain": []}]}',
              b'{"chain": [{"chord": {"id": "c", "header": 5, "body": null}}]}', b"[" * 5000 + b"]" * 5000]


def test_bad_canvas_headers_are_dead_lettered_and_worker_continues(app: Taskq, kind: str) -> None:
    """Any Kafka client can send a ``canvas`` header; one the worker cannot follow used to be found
    after the task ran, in the finisher, whose thread died: nothing was stored or committed after it."""
    echo = echo_task(app)
    app.ensure_topic(echo.topic, echo.partitions)
    poison = []
    for i, canvas in enumerate(BAD_CANVAS):
        value, headers = valid_message(app, echo.name, f"poison-canvas-{i}", [i])
        poison.append((b"k", value, [*headers, ("canvas", canvas)]))
    produce_raw(app, echo.topic, poison)
    with worker_thread(app, concurrency=2, forward_delayed=False) as (worker, _):
        assert echo.apply_async(("still alive",), key="k").get(timeout=WAIT[kind]) == "still alive"
    assert worker.stats.rejected == len(BAD_CANVAS)
    for i in range(len(BAD_CANVAS)):
        with pytest.raises(MessageRejected, match="bad header 'canvas'"):
            app.AsyncResult(f"poison-canvas-{i}").get(timeout=1)




def test_malformed_messages_are_dead_lettered_and_worker_continues(app: Taskq, kind: str) -> None:
    echo = echo_task(app)
    app.ensure_topic(echo.topic, echo.partitions)
    good_value, good_headers = valid_message(app, echo.name, "x", [1])
    no_id = [(h, v) for h, v in good_headers if h != "id"]
    with_id = [(h, v if h != "id" else b"poison-json") for h, v in good_headers]
    poison: dict[str, tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = {
        "random-bytes-no-headers": (b"same-key", os.urandom(64), []),
        "random-bytes-valid-headers": (b"same-key", os.urandom(64), with_id),
        "missing-id-header": (b"same-key", good_value, no_id),
        "truncated-json": (b"same-key", good_value[:-3], with_id),
        "not-args-kwargs": (b"same-key", b'{"args": [1]}', with_id),
        "bad-attempts-header": (b"same-key", good_value, with_id + [("attempts", b"many")]),
        "empty-value": (b"same-key", None, with_id),
        "pickle-not-accepted": (b"same-key", pickle.dumps([[1], {}]),
                                [(h, b"application/x-python-serialize" if h == "content-type" else v)
                                 for h, v in with_id]),
    }
    produce_raw(app, echo.topic, [(key, value, headers + [("x-case", name.encode())])
                                  for name, (key, value, headers) in poison.items()])
    with worker_thread(app, concurrency=4, forward_delayed=False) as (worker, _):
        after = echo.apply_async(({"ok": True},), key="same-key")
        assert after.get(timeout=WAIT[kind]) == {"ok": True}
        more = [echo.delay(i) for i in range(20)]
        assert [r.get(timeout=WAIT[kind]) for r in more] == list(range(20))
    assert worker.stats.rejected == len(poison) and worker.stats.succeeded == 21
    letters = read_records(app, app.dlq_topic(echo.topic), len(poison), WAIT[kind])
    by_case = {(r.header("x-case") or b"").decode(): r for r in letters}
    assert sorted(by_case) == sorted(poison), by_case.keys()
    for name, letter in by_case.items():
        assert letter.header("dead-reason") == b"rejected", name
        error_type = (letter.header("error-type") or b"").decode()
        assert error_type in ("taskq.message.MalformedMessage", "taskq.errors.SerializationError"), (name, error_type)
        assert letter.value == poison[name][1], name
        assert letter.header("original-topic") == echo.topic.encode()
    assert b"missing header 'id'" in (by_case["missing-id-header"].header("error-message") or b"")
    assert b"not accepted" in (by_case["pickle-not-accepted"].header("error-message") or b"")
    # all poison records sit before the valid one in one partition, and all are committed
    partition = int(by_case["truncated-json"].header("original-partition") or b"-1")
    high = watermarks(app, echo.topic)[partition][1]
    assert app.broker.committed(app.group, echo.topic).get(partition) == high >= len(poison) + 1


# --------------------------------------------------------------------------- (c) unserializable arguments


@pytest.mark.parametrize("call", ["object-arg", "set-kwarg", "bytes-arg", "huge-int"])
def test_unserializable_arguments_raise_at_call_site(app: Taskq, call: str) -> None:
    echo = echo_task(app)
    app.ensure_topic(echo.topic, echo.partitions)
    with pytest.raises(SerializationError) as info:
        if call == "object-arg":
            echo.delay(object())
        elif call == "set-kwarg":
            echo.apply_async((), {"value": {1, 2}})
        elif call == "bytes-arg":
            echo.delay(b"raw")
        else:
            echo.delay(2 ** 70)
    assert isinstance(info.value, TypeError)
    assert "json" in str(info.value)
    app.flush()
    assert all(high == 0 for _, high in watermarks(app, echo.topic).values())
    assert echo.delay("fine") is not None  # the app is still usable
    app.flush()
    assert sum(high for _, high in watermarks(app, echo.topic).values()) == 1


def watermarks(app: Taskq, topic: str) -> dict[int, tuple[int, int]]:
    """``broker.watermarks``, retried: just after a topic is created Kafka may answer NOT_LEADER
    (and ``KafkaBroker.watermarks`` lets that through as a raw KafkaException)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return app.broker.watermarks(topic)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --------------------------------------------------------------------------- (d) unreachable services


def test_unreachable_kafka_delay_raises_broker_error_quickly() -> None:
    app = Taskq("x", broker="kafka://127.0.0.1:1", backend="redis://127.0.0.1:1/0", connect_timeout=2)

    @app.task(name="x.t")
    def t() -> None: ...

    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        t.delay()
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert "127.0.0.1:1" in str(info.value)
    app.close()


def test_worker_with_kafka_down_says_so_in_one_line() -> None:
    """A new user's first mistake: Kafka not started. The worker's one-line error came after librdkafka had
    printed a "Connect ... failed" line every 12 ms of the wait (about 750 lines in 10 s)."""
    env = {**os.environ, "TASKQ_BROKER_URL": "kafka://127.0.0.1:1", "TASKQ_RESULT_BACKEND": "redis://127.0.0.1:1/0",
           "TASKQ_CONNECT_TIMEOUT": "2"}
    done = subprocess.run([sys.executable, "-m", "taskq.cli", "worker", "-A", "tests.apps.limits"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and "cannot reach Kafka at 127.0.0.1:1 within 2 s" in lines[-1], done.stderr
    assert len(lines) <= 3, f"{len(lines)} lines: {lines[:5]}"


def test_unreachable_redis_get_raises_backend_error_quickly(kafka_url: str) -> None:
    app = Taskq("x", broker=kafka_url, backend="redis://127.0.0.1:1/0", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        app.AsyncResult("some-task-id").get(timeout=30)
    assert time.monotonic() - started < 10
    assert "redis://127.0.0.1:1/0" in str(info.value)
    with pytest.raises(BackendError):
        app.AsyncResult("some-task-id").status  # noqa: B018
    app.close()


def test_stop_during_a_redis_outage_is_not_held_by_the_redelivery_check(kafka_url: str, unique: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A worker started while Redis is down (a new user's first mistake) waits in its redelivery check for
    the records already waiting; Ctrl-C must still stop it at once (it used to wait out ``outage_timeout``,
    300 s by default). The records had not started: they stay uncommitted for the next worker."""
    app = Taskq(f"stopout{unique}", broker=kafka_url, backend="redis://127.0.0.1:1/0", outage_timeout=120)

    @app.task(name=f"stopout{unique}.t")
    def t() -> None: ...

    t.delay()
    app.flush()
    worker, thread, errors = start_worker(app)
    deadline = time.monotonic() + 60
    while "check results failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "check results failed" in caplog.text, caplog.text
    started = time.monotonic()
    worker.stop()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - started < 10, "the stop waited for Redis"
    assert not errors, errors
    assert worker.stats.succeeded == 0
    assert app.broker.committed(app.group, t.topic) in ({}, {p: 0 for p in range(t.partitions)})
    app.close()


# --------------------------------------------------------------------------- (e) bad configuration


def _one_line_naming(exc: BaseException, text: str) -> None:
    message = str(exc)
    assert text in message, message
    assert "\n" not in message, message


@pytest.mark.parametrize("url", ["amqp://x", "kafka://", "local://", "redis://127.0.0.1:6379/0"])
def test_bad_broker_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Taskq("x", broker=url, backend="redis://127.0.0.1:1/0")
    _one_line_naming(info.value, repr(url))


@pytest.mark.parametrize("url", ["mongodb://x", "http://127.0.0.1:6379", "local://"])
def test_bad_backend_url(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Taskq("x", backend=url, local_path=str(tmp_path / "q.db"))
    _one_line_naming(info.value, repr(url))


def test_kafka_without_backend_is_config_error() -> None:
    app = Taskq("x", broker="kafka://127.0.0.1:1")
    with pytest.raises(ConfigError, match="result_backend is not set"):
        app.AsyncResult("id").get(timeout=1)


@pytest.mark.parametrize("setting,hint", [("brokr_url", "broker_url"), ("concurrency", None),
                                          ("result_expire", "result_expires")])
def test_unknown_setting(setting: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        Taskq("x", **{setting: 1})
    _one_line_naming(info.value, repr(setting))
    if hint:
        assert repr(hint) in str(info.value)


def test_bad_env_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_DEFAULT_PARTITIONS", "six")
    with pytest.raises(ConfigError) as info:
        Taskq("x")
    _one_line_naming(info.value, "TASKQ_DEFAULT_PARTITIONS='six'")


def test_a_kafka_broker_knows_cheaply_whether_anything_listens(kafka_url: str) -> None:
    """The worker's look before it makes clients that log each failed connect: a TCP connect to a bootstrap
    server, true when one of several answers."""
    from taskq.brokers.kafka import KafkaBroker

    assert KafkaBroker(kafka_url).listening()
    assert not KafkaBroker("kafka://127.0.0.1:1", connect_timeout=1).listening()
    host_port = kafka_url.removeprefix("kafka://").split("?")[0]
    assert KafkaBroker(f"kafka://127.0.0.1:1,{host_port}").listening()
