"""Hardening against what adversarial runs and outside clients found (issue 8).

Each test runs on the embedded local broker and on real Kafka + Redis where the behaviour is the
broker's or the backend's; pool tests run the worker in this process so a task can report to the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import ConfigError, TaskFailed, Taskq, TimeLimitExceeded
from tests.support import WorkerProcess, read_records, wait_until, worker_thread

KAFKA = pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis])


@pytest.fixture(params=["local", KAFKA])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def make_app(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, **settings: object) -> Taskq:
    """A fresh app (unique name, hence unique topics and group) on the local broker or Kafka + Redis."""
    if kind == "local":
        return Taskq(f"hard{unique}", local_path=str(tmp_path / "q.db"), **settings)
    return Taskq(f"hard{unique}", broker=request.getfixturevalue("kafka_url"),
                 backend=request.getfixturevalue("redis_url"), topic_prefix=f"hard{unique}.", **settings)


class Probe:
    """What tasks running in this process report to the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.spans: dict[str, list[float]] = {}

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


@pytest.fixture
def pools_app(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[tuple[Taskq, Probe]]:
    app = make_app(kind, request, tmp_path, unique)
    probe = Probe()

    @app.task(name="hard.exits", key="key", max_retries=0)
    def exits(key: str) -> None:
        raise SystemExit(3)

    @app.task(name="hard.cancels", key="key", max_retries=0)
    async def cancels(key: str) -> None:
        raise asyncio.CancelledError()

    @app.task(name="hard.ok", key="key")
    def ok(key: str, seq: int) -> int:
        return seq

    @app.task(name="hard.aok", key="key")
    async def aok(key: str, seq: int) -> int:
        return seq

    @app.task(name="hard.nap", key="key")
    async def nap(key: str, seconds: float) -> None:
        probe.enter()
        try:
            await asyncio.sleep(seconds)
        finally:
            probe.leave()

    @app.task(name="hard.blocked", key="key", time_limit=0.5, max_retries=0)
    def blocked(key: str, seconds: float) -> str:
        start = time.time()
        try:
            time.sleep(seconds)  # one call in C: the threads pool cannot interrupt it
        finally:
            probe.spans[f"blocked {seconds}"] = [start, time.time()]
        return "finished"

    yield app, probe
    app.close()


def tasks_of(app: Taskq) -> dict:
    return {name.removeprefix("hard."): task for name, task in app.tasks.items()}


# --------------------------------------------------------------------------- 2. BaseException from user code


@pytest.mark.parametrize("pool,name", [("threads", "exits"), ("asyncio", "cancels")])
def test_base_exception_from_a_task_is_a_failure_and_the_key_moves_on(
        pools_app: tuple[Taskq, Probe], pool: str, name: str) -> None:
    """SystemExit (threads) or CancelledError (asyncio) raised by the task: FAILURE, the next task of its
    key runs, and the worker stops at once when asked."""
    app, _ = pools_app
    t = tasks_of(app)
    with worker_thread(app, pool=pool, concurrency=2, stop_timeout=60.0):
        bad = t[name].delay("k")
        follower = (t["aok"] if pool == "asyncio" else t["ok"]).delay("k", 7)
        with pytest.raises(TaskFailed, match="SystemExit|CancelledError"):
            bad.get(timeout=60)  # the first test on a fresh Kafka also waits for the group's first join
        assert follower.get(timeout=30) == 7
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 20, "the worker waited out its stop timeout for a record without outcome"


# --------------------------------------------------------------------------- 3. -c bounds the asyncio pool


def test_asyncio_pool_honours_concurrency(pools_app: tuple[Taskq, Probe]) -> None:
    """``--pool asyncio -c 2``: at most two coroutines in flight, however many keys are ready."""
    app, probe = pools_app
    nap = tasks_of(app)["nap"]
    with worker_thread(app, pool="asyncio", concurrency=2):
        results = [nap.delay(f"k{i}", 0.2) for i in range(12)]
        for r in results:
            r.get(timeout=60)
    assert probe.most == 2, f"{probe.most} coroutines ran at once with -c 2"


# --------------------------------------------------------------------------- 4. threads hard limit holds the key


def test_threads_hard_limit_keeps_the_key_until_the_thread_stops(pools_app: tuple[Taskq, Probe]) -> None:
    """A task blocked in one C call past its time limit fails with TimeLimitExceeded, but the next task of
    its key starts only once the blocked thread really returned: the two never overlap."""
    app, probe = pools_app
    t = tasks_of(app)
    with worker_thread(app, pool="threads", concurrency=2):
        stuck = t["blocked"].delay("k", 2.0)
        follower = t["blocked"].delay("k", 0.0)
        with pytest.raises(TimeLimitExceeded):
            stuck.get(timeout=30)
        assert follower.get(timeout=30) == "finished"
        assert t["ok"].delay("other", 1).get(timeout=30) == 1  # the pool kept its strength
    start, end = probe.spans["blocked 2.0"]
    assert end - start >= 2.0
    assert probe.spans["blocked 0.0"][0] >= end, (
        f"the next task of the key started {end - probe.spans['blocked 0.0'][0]:.2f} s before the stuck one "
        "returned")


# --------------------------------------------------------------------------- 9. content types with parameters


def produce_raw(app: Taskq, topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
                ) -> None:
    """Produce hand-made records and wait for their acknowledgement."""
    producer = app.broker.producer()
    errors: list[BaseException] = []
    for key, value, headers in records:
        producer.produce(topic, key, value, headers,
                         on_delivery=lambda err, _rec: errors.append(err) if err is not None else None)
    assert producer.flush(30) == 0 and not errors, errors


@pytest.fixture
def echo_app(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Taskq]:
    app = make_app(kind, request, tmp_path, unique)

    @app.task(name="hard.echo", key="key")
    def echo(key: str, value: object) -> object:
        return value

    yield app
    app.close()


def test_content_type_with_parameters_is_accepted(echo_app: Taskq, unique: str) -> None:
    """``application/json; charset=utf-8`` and other spellings HTTP allows run; a foreign charset is refused
    (dead-lettered) with a reason."""
    app = echo_app
    echo = app.tasks["hard.echo"]
    app.ensure_topic(echo.topic, echo.partitions)
    spellings = ["application/json; charset=utf-8", "Application/JSON;charset=\"UTF-8\"", "application/json ;"]
    records = []
    for i, content_type in enumerate(spellings + ["application/json; charset=latin-1"]):
        value = f'[["k{i}", {i}], {{}}]'.encode()
        headers = [("id", f"ct-{unique}-{i}".encode()), ("task", b"hard.echo"), ("content-type", content_type.encode())]
        records.append((f"k{i}".encode(), value, headers))
    produce_raw(app, echo.topic, records)
    with worker_thread(app, concurrency=2, forward_delayed=False):
        for i in range(len(spellings)):
            assert app.AsyncResult(f"ct-{unique}-{i}").get(timeout=30) == i
        letters = read_records(app, app.dlq_topic(echo.topic), 1, timeout=30)
    assert [r.header("id") for r in letters] == [f"ct-{unique}-3".encode()]
    assert b"UTF-8" in (dict(letters[0].headers).get("error-message") or b"")


# --------------------------------------------------------------------------- 12. SIGTERM while importing the app


def test_sigterm_while_importing_the_app_stops_cleanly(kind: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path, unique: str) -> None:
    """``taskq worker`` sent SIGTERM while it still imports its app exits 0 without starting to consume."""
    marker = tmp_path / "importing"
    env = {"SLOW_IMPORT_MARKER": str(marker), "SLOW_IMPORT_SECONDS": "2", "TASKQ_GROUP": f"slow{unique}"}
    if kind == "local":
        env["TASKQ_LOCAL_PATH"] = str(tmp_path / "q.db")
    else:
        env["TASKQ_BROKER_URL"] = request.getfixturevalue("kafka_url")
        env["TASKQ_RESULT_BACKEND"] = request.getfixturevalue("redis_url")
    worker = WorkerProcess("tests.apps.slow_import", env)
    try:
        wait_until(marker.exists, 30, "the worker to start importing its app")
        t0 = time.monotonic()
        code = worker.terminate(timeout=30)
        assert code == 0, f"exit code {code}:\n{worker.log}"
        assert time.monotonic() - t0 < 10
        assert "stopped before it started" in worker.log
    finally:
        worker.stop()


# --------------------------------------------------------------------------- 6. settings and sub-second expiry


@pytest.mark.parametrize("setting,value,message", [
    ("result_expires", 0.0001, "0.001 to"),
    ("result_expires", 1e16, "result_expires must be 0.001 to 1e\\+12 s"),  # past what Redis's PX takes
    ("outage_timeout", float("nan"), "outage_timeout must be a positive number"),  # a deadline never reached
    ("connect_timeout", float("inf"), "connect_timeout must be a positive number"),
    ("strict_order_max_hold", float("nan"), "strict_order_max_hold must be 0 or more"),
    ("result_expires", "soon", "of type float"),
    ("default_partitions", 2.5, "of type int"),
    ("skip_finished", 1, "of type bool"),
    ("retry_tiers", (0, 10), "positive"),
    ("default_max_retries", -1, "0 or more"),
])
def test_bad_settings_are_refused_with_their_name(setting: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Taskq("settings", **{setting: value})


def test_sub_second_result_expiry_stores_and_expires(echo_app: Taskq, kind: str) -> None:
    """``result_expires=0.5``: every result is stored (Redis gets PX, not the refused EX 0) and gone soon after."""
    app = echo_app
    app.settings.result_expires = 0.5  # as if given to Taskq(): the backend is made on first use
    echo = app.tasks["hard.echo"]
    with worker_thread(app, concurrency=2):
        results = [echo.delay(f"k{i}", i) for i in range(5)]
        assert [r.get(timeout=30) for r in results] == list(range(5))
        stored = time.monotonic()
        wait_until(lambda: all(app.backend.get(r.id) is None for r in results), 5, "the results to expire")
    assert time.monotonic() - stored < 3


# --------------------------------------------------------------------------- 1. too-large retries and dead letters


def sized_message(app: Taskq, task: str, task_id: str, key: bytes, size: int, big_key: bool = False,
                  ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a task message of exactly ``size`` bytes (key + value + headers), the padding
    in the one string argument, or in the key when ``big_key``."""
    from taskq.message import TaskMessage

    def build(pad: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        k = key + b"k" * pad if big_key else key
        value, headers = TaskMessage(task_id, task, [key.decode(), "" if big_key else "p" * pad], {}, k).encode(
            app.serializers)
        return k, value, headers

    k, value, headers = build(0)
    base = len(k) + len(value) + sum(len(n) + len(v) for n, v in headers)
    k, value, headers = build(size - base)
    return k, value, headers


@pytest.fixture
def big_app(kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Taskq]:
    app = make_app(kind, request, tmp_path, unique, retry_tiers=(1.0,))

    @app.task(name="hard.quote", key="key", max_retries=0)
    def quote(key: str, payload: str) -> None:
        raise ValueError(f"cannot parse {payload[:3000]!r}")  # the error quotes part of its input

    @app.task(name="hard.quote_retry", key="key", max_retries=2, autoretry_for=(ValueError,))
    def quote_retry(key: str, payload: str) -> None:
        raise ValueError(f"cannot parse {payload[:3000]!r}")

    @app.task(name="hard.fine", key="key")
    def fine(key: str, payload: str) -> int:
        return len(payload)

    yield app
    app.close()


def test_too_large_dead_letters_and_retries_are_shrunk_and_the_worker_moves_on(big_app: Taskq, unique: str) -> None:
    """Messages just under the 1 MB limit whose dead letter or retry is over it: the dead letter is sent
    without its traceback, or without its value (a reference to the original instead); a message whose
    every form is too large gets a FAILURE saying so; later tasks of the same key run; replay works."""
    from taskq import dlq
    from taskq.deadletter import DeadLetter

    app = big_app
    t = {name.removeprefix("hard."): task for name, task in app.tasks.items()}
    limit = 1_000_000
    cases = {  # id -> (task, size, big key?)
        f"slim-{unique}": ("hard.quote", limit - 5000, False),  # over the limit with its error text and traceback
        f"retry-{unique}": ("hard.quote_retry", limit - 60, False),  # its retry is over: dead-lettered by reference
        f"key-{unique}": ("hard.quote", limit - 60, True),  # the key alone fills the message: no dead letter fits
    }
    for task_id, (name, size, big_key) in cases.items():
        app.ensure_topic(app.tasks[name].topic, app.tasks[name].partitions)
        produce_raw(app, app.tasks[name].topic, [sized_message(app, name, task_id, b"same", size, big_key)])
    with worker_thread(app, concurrency=2):
        followers = {name: app.tasks[name].apply_async(("same", "x"), key="same") for name, _, _ in cases.values()}
        for task_id in cases:
            with pytest.raises(ValueError, match="cannot parse"):
                app.AsyncResult(task_id).get(timeout=60)
        assert t["fine"].delay("same", "abc").get(timeout=30) == 3
        for follower in followers.values():  # the same key after the big ones: ran and failed on its own
            with pytest.raises(ValueError, match="cannot parse 'x'"):
                follower.get(timeout=30)
    assert "its retry was too large to send; dead-lettered" in app.AsyncResult(f"retry-{unique}").record.error
    assert "its dead letter was too large to send" in app.AsyncResult(f"key-{unique}").record.error
    letters = {d.id: d for name in ("hard.quote", "hard.quote_retry") for d in dlq.dead_letters(app, name)}
    slim, by_ref = letters[f"slim-{unique}"], letters[f"retry-{unique}"]
    assert slim.traceback == "" and len(slim.record.value or b"") > limit - 6000 and "cannot parse" in slim.error
    assert by_ref.record.value is None and by_ref.value_ref is not None
    assert f"key-{unique}" not in letters
    # a letter by reference is replayed with the original value, read from the task topic
    app.backend.forget([f"retry-{unique}"])
    assert dlq._resend(app, DeadLetter(by_ref.record))[0] is not None


def test_a_dead_letter_by_reference_is_replayed_with_the_original_headers(big_app: Taskq, unique: str) -> None:
    """An original whose long header (from a client other than taskq) makes its dead letter too large: the
    letter leaves the value and that header out, and the replay sends both again, read from the task topic."""
    from taskq import dlq
    from taskq.message import TaskMessage

    app = big_app
    quote = app.tasks["hard.quote"]
    app.ensure_topic(quote.topic, quote.partitions)
    task_id = f"hdr-{unique}"
    value, headers = TaskMessage(task_id, "hard.quote", ["same", "x"], {}, b"same").encode(app.serializers)
    size = 4 + len(value) + sum(len(n) + len(v) for n, v in headers) + len("x-big")
    big = b"b" * (999_940 - size)  # the original fits; with the error's headers added it does not
    produce_raw(app, quote.topic, [(b"same", value, [*headers, ("x-big", big)])])
    with worker_thread(app, concurrency=2), pytest.raises(ValueError, match="cannot parse 'x'"):
        app.AsyncResult(task_id).get(timeout=60)
    [letter] = [d for d in dlq.dead_letters(app, "hard.quote") if d.id == task_id]
    assert letter.value_ref is not None and letter.record.header("x-big") is None
    dlq.replay(app, [letter])
    sent = [r for r in dlq.read_topic(app, quote.topic) if r.header("id") == task_id.encode()]
    assert len(sent) == 2 and sent[1].value == value and sent[1].header("x-big") == big


# --------------------------------------------------------------------------- 8. rejected messages resolve get()


def test_rejected_message_with_an_id_fails_its_result_at_once(echo_app: Taskq, unique: str) -> None:
    """Unknown task, undecodable body, content type not accepted: each is dead-lettered and, having a
    readable id, gets a FAILURE with the reason, so ``get()`` raises MessageRejected at once."""
    from taskq import MessageRejected

    app = echo_app
    echo = app.tasks["hard.echo"]
    app.ensure_topic(echo.topic, echo.partitions)
    cases = {
        "unknown": ([("task", b"no.such.task"), ("content-type", b"application/json")], b'[["k"], {}]',
                    "no.such.task"),
        "garbled": ([("task", b"hard.echo"), ("content-type", b"application/json")], b'[["k"], {', "decode"),
        "pickle": ([("task", b"hard.echo"), ("content-type", b"application/x-python-serialize")], b"\x80\x04N.",
                   "not accepted"),
    }
    produce_raw(app, echo.topic, [(b"k", value, [("id", f"{name}-{unique}".encode()), *headers])
                                  for name, (headers, value, _) in cases.items()])
    with worker_thread(app, concurrency=2, forward_delayed=False):
        assert echo.apply_async(("k", "after"), key="k").get(timeout=30) == "after"  # after the three
        for name, (_, _, reason) in cases.items():
            t0 = time.monotonic()
            with pytest.raises(MessageRejected, match=reason):
                app.AsyncResult(f"{name}-{unique}").get(timeout=10)
            assert time.monotonic() - t0 < 1
    assert len(read_records(app, app.dlq_topic(echo.topic), 3, timeout=30)) == 3


# --------------------------------------------------------------------------- 11. non-Python producers


@pytest.mark.kafka
@pytest.mark.redis
def test_kafka_console_producer_sends_tasks(kafka_url: str, redis_url: str, unique: str) -> None:
    """Tasks produced by Kafka's own console producer (Java, as the README's wire format says) run; keys
    land where taskq's partitioner puts them, so per-key order holds across producers."""
    import subprocess
    import sys

    from taskq.partitioner import partition_for
    from tests.conftest import _start_or_give_up

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from services import KAFKA_LIBS, fetch_kafka, java_binary  # scripts/services.py

    app = Taskq(f"wire{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"wire{unique}.")

    @app.task(name="wire.add", key="user")
    def add(x: int, y: int, user: str) -> int:
        return x + y

    app.ensure_topic(add.topic, add.partitions)
    lines = []
    for i in range(6):
        headers = f"id:wire-{unique}-{i},task:wire.add,content-type:application/json; charset=utf-8,x-source:java"
        lines.append(f'{headers}\tu{i % 3}\t[[{i}, 1], {{"user": "u{i % 3}"}}]')
    java = _start_or_give_up("java", java_binary)
    fetch_kafka()
    done = subprocess.run(
        [java, "-cp", str(KAFKA_LIBS / "*"), "org.apache.kafka.tools.ConsoleProducer",
         "--bootstrap-server", kafka_url.removeprefix("kafka://"), "--topic", add.topic,
         "--property", "parse.key=true", "--property", "parse.headers=true"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        with worker_thread(app, concurrency=2, forward_delayed=False):
            assert [app.AsyncResult(f"wire-{unique}-{i}").get(timeout=60) for i in range(6)] == [i + 1 for i in range(6)]
        from taskq.dlq import read_topic

        placed = {r.key: r.partition for r in read_topic(app, add.topic)}
        assert placed == {k: partition_for(k, add.partitions) for k in (b"u0", b"u1", b"u2")}
    finally:
        app.close()


# --------------------------------------------------------------------------- 5. a far-future eta blocks nothing


def test_far_future_eta_does_not_block_its_delay_tier(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                      unique: str) -> None:
    """A task due tomorrow sits first in a tier partition; countdowns sent after it into the same tier
    partition run on time (at most ~1 s late); the far one stays delayed, not lost."""
    from taskq.dlq import read_topic

    app = make_app(kind, request, tmp_path, unique, retry_tiers=(0.5, 30.0))
    ran: dict[str, float] = {}

    @app.task(name="hard.when", key="key")
    def when(key: str, label: str) -> float:
        ran[label] = time.time()
        return ran[label]

    try:
        with worker_thread(app, concurrency=2):
            far = when.apply_async(("k", "far"), eta=time.time() + 86400)  # same key: same tier partition
            sent = time.time()
            soon = [when.apply_async(("k", f"soon{i}"), countdown=c) for i, c in enumerate((2.0, 3.0, 1.0))]
            app.flush()
            for r in soon:
                r.get(timeout=30)
            assert far.status == "PENDING"
            copies = [r for t in app.delay_topics for r in read_topic(app, t) if r.header("id") == far.id.encode()]
        late = {label: ran[label] - (sent + c) for label, c in zip(("soon0", "soon1", "soon2"), (2.0, 3.0, 1.0))}
        assert all(-0.1 < x < 1.2 for x in late.values()), late
        assert "far" not in ran and copies, "the far-future task left the tier"
    finally:
        app.close()


@pytest.mark.parametrize("eta", [b"nan", b"inf"])
def test_a_delayed_record_with_a_non_finite_eta_blocks_no_other(kind: str, request: pytest.FixtureRequest,
                                                                 tmp_path: Path, unique: str, eta: bytes) -> None:
    """An outside client's record in a delay tier with eta "nan" sat at the top of the forwarder's due-time
    heap for ever, and no retry or countdown of the group was forwarded again. Now it runs at once."""
    from taskq.message import H_ETA, H_ORIGIN, TaskMessage

    app = make_app(kind, request, tmp_path, unique, retry_tiers=(0.5, 30.0))

    @app.task(name="hard.later", key="key")
    def later(key: str, label: str) -> str:
        return label

    try:
        app.ensure_topic(later.topic, later.partitions)
        app.ensure_topics({t: later.partitions for t in app.delay_topics})
        value, headers = TaskMessage(f"odd{unique}", later.name, ["k", "odd"], {}, b"k").encode(app.serializers)
        producer = app.broker.producer()
        producer.produce(app.delay_topic(0.5), b"k", value, [*headers, (H_ETA, eta), (H_ORIGIN, later.topic.encode())])
        assert producer.flush(30) == 0
        with worker_thread(app, concurrency=2):
            wait_until(lambda: app.AsyncResult(f"odd{unique}").ready(), 30, "the odd-eta task ran")
            soon = later.apply_async(("k", "soon"), countdown=0.5)
            assert soon.get(timeout=30) == "soon"
        assert app.AsyncResult(f"odd{unique}").get(timeout=1) == "odd"
    finally:
        app.close()


# --------------------------------------------------------------------------- 7. heartbeats while waiting at revoke


def test_joining_worker_under_slow_keyed_work_runs_nothing_twice(kind: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path, unique: str) -> None:
    """A worker joins while the first one runs tasks longer than the group's session timeout: the first
    one's revoke waits for its running task, keeps heartbeating meanwhile, and is not evicted, so the
    newcomer never re-runs a task the first one finishes."""
    from taskq.partitioner import partition_for

    session = {"local": {"session_timeout": 1.0}, "kafka": {"session.timeout.ms": 6000}}[kind]
    work_seconds = {"local": 2.5, "kafka": 7.0}[kind]  # longer than the session
    app = make_app(kind, request, tmp_path, unique, consumer_options=session, default_partitions=2)
    runs: dict[str, int] = {}
    lock = threading.Lock()

    @app.task(name="hard.slow", key="key")
    def slow(key: str, seq: int) -> int:
        with lock:
            runs[f"{key}/{seq}"] = runs.get(f"{key}/{seq}", 0) + 1
        time.sleep(work_seconds)
        return seq

    keys = []
    for candidate in (f"k{i}" for i in range(100)):
        if partition_for(candidate.encode(), 2) not in {partition_for(k.encode(), 2) for k in keys}:
            keys.append(candidate)
        if len(keys) == 2:
            break
    try:
        with worker_thread(app, concurrency=2, name="first"):
            results = [slow.delay(k, s) for s in range(2) for k in keys]
            app.flush()
            wait_until(lambda: len(runs) >= 2, 60, "both keys to start on the first worker")
            with worker_thread(app, concurrency=2, name="second"):
                assert sorted(r.get(timeout=120) for r in results) == [0, 0, 1, 1]
    finally:
        app.close()
    assert runs and max(runs.values()) == 1, f"tasks run twice: {runs}"


# --------------------------------------------------------------------------- 10. order per key across retries


@pytest.mark.parametrize("strict", [True, False])
def test_strict_order_keeps_a_keys_order_across_a_retry(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                       unique: str, strict: bool) -> None:
    """Key k: A fails once and retries in 1 s, B and C follow. ``strict_order=True``: A, A, B, C (the retry
    waits in the worker holding the key, other keys flow meanwhile). Default: A, B, C, A (the retry goes
    through a delay tier; the README says order across retries is not kept)."""
    app = make_app(kind, request, tmp_path, unique)
    order: list[str] = []
    failed: set[str] = set()

    @app.task(name="hard.step", key="key", bind=True, strict_order=strict, max_retries=3)
    def step(self, key: str, label: str) -> str:
        order.append(f"{key}:{label}")
        if label == "A" and label not in failed:
            failed.add(label)
            raise self.retry(countdown=1.0)
        return label

    try:
        with worker_thread(app, concurrency=4):
            results = [step.delay("k", label) for label in "ABC"]
            other = step.delay("other", "X")  # another key: not held back by k's retry
            assert other.get(timeout=60) == "X"
            assert [r.get(timeout=60) for r in results] == list("ABC")
    finally:
        app.close()
    mine = [x for x in order if x.startswith("k:")]
    assert mine == (["k:A", "k:A", "k:B", "k:C"] if strict else ["k:A", "k:B", "k:C", "k:A"]), order
    if strict:
        assert order.index("other:X") < order.index("k:A", 1), "the other key waited for k's retry"


@pytest.mark.kafka
@pytest.mark.redis
def test_a_result_write_redis_refuses_is_not_retried_forever(kafka_url: str, redis_url: str, unique: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Redis refuses writes (maxmemory reached, noeviction): the worker tries again for a bounded time,
    logs the result it could not store and moves on; once Redis accepts writes, later results are stored."""
    import logging

    import redis as redis_lib

    monkeypatch.setattr("taskq.worker.finisher.REFUSED_FOR", 2.0)
    app = Taskq(f"oom{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"oom{unique}.")

    @app.task(name="oom.echo", key="key")
    def echo(key: str, value: int) -> int:
        return value

    client = redis_lib.Redis.from_url(redis_url)
    old = client.config_get("maxmemory")["maxmemory"]
    caplog.set_level(logging.WARNING, logger="taskq.worker")
    try:
        with worker_thread(app, concurrency=2):
            assert echo.delay("k", 1).get(timeout=60) == 1
            client.config_set("maxmemory", "1")
            try:
                refused = echo.delay("k", 2)
                wait_until(lambda: "not stored: the backend refused it" in caplog.text, 30,
                           "the worker to give up on the refused write")
            finally:
                client.config_set("maxmemory", old)
            assert echo.delay("k", 3).get(timeout=30) == 3  # the worker moved on
            assert refused.status == "PENDING"
    finally:
        client.config_set("maxmemory", old)
        client.close()
        app.close()


def test_more_threads_than_the_system_allows_is_a_one_line_error(tmp_path: Path) -> None:
    """-c beyond what the system can start (here: an address-space limit that thread stacks exhaust) used
    to end in a traceback and an abort at exit; the worker says what to change and exits 1."""
    (tmp_path / "manythreads.py").write_text(
        f"from taskq import Taskq\napp = Taskq('many', local_path={str(tmp_path / 'q.db')!r})\n"
        "@app.task(name='many.echo')\ndef echo(x):\n    return x\n")
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
              "from taskq.cli import main\n"
              "sys.argv = ['taskq', 'worker', '-A', 'manythreads', '-c', '2000']\n"
              "main()\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "of 2000 threads" in errors[0] and "lower -c/--concurrency" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_result_get_inside_a_task_is_refused_as_in_celery(tmp_path: Path, unique: str, pool: str) -> None:
    """With -c 1 the waiting task held the only slot (in the asyncio pool, the event loop) that the task
    it waited for needed: it waited out its timeout, or for ever without one."""
    app = make_app("local", None, tmp_path, unique)  # type: ignore[arg-type]

    @app.task(name="hard.echo")
    def echo(value: int) -> int:
        return value

    @app.task(name="hard.waits", max_retries=0)
    def waits(allow: bool) -> int:
        return echo.delay(5).get(timeout=20, disable_sync_subtasks=not allow)

    @app.task(name="hard.awaits", max_retries=0)
    async def awaits() -> int:
        return echo.delay(6).get(timeout=20)

    with worker_thread(app, concurrency=1, pool=pool):
        for result in (waits.delay(False), awaits.delay()):
            error = result.get(timeout=20, propagate=False)
            assert isinstance(error, RuntimeError) and "never call result.get() within a task" in str(error)
    with worker_thread(app, concurrency=2, pool="threads"):
        assert waits.delay(True).get(timeout=30) == 5  # allowed when asked for, with a slot to spare
    app.close()
