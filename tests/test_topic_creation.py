"""Topic creation on real Kafka grows gently with the number of task types: one admin round trip for all
the task topics at the first send, one for everything a worker needs at its start, dead letters in one
partition."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Taskq
from taskq.topics import DLQ_PARTITIONS
from tests.support import worker_thread

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
TYPES = 12


def growth_app(kafka_url: str, redis_url: str, unique: str) -> Taskq:
    app = Taskq(f"growth{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"growth{unique}.",
                events=True)

    def noop() -> None:
        return None

    for i in range(TYPES):
        app.task(name=f"t{i:02d}")(noop)
    return app


@pytest.fixture
def app_and_calls(kafka_url: str, redis_url: str, unique: str) -> Iterator[tuple[Taskq, list[dict[str, int]]]]:
    """The app and the topics of every ``ensure_topics`` call its (real) Kafka broker object receives."""
    app = growth_app(kafka_url, redis_url, unique)
    calls: list[dict[str, int]] = []
    broker = app.broker
    real = broker.ensure_topics

    def recording(topics: dict[str, int], *args: Any, **kwargs: Any) -> set[str]:
        calls.append(dict(topics))
        return real(topics, *args, **kwargs)

    broker.ensure_topics = recording  # type: ignore[method-assign]
    yield app, calls
    app.close()


def test_first_send_creates_every_task_topic_in_one_call(app_and_calls: tuple[Taskq, list[dict[str, int]]]) -> None:
    app, calls = app_and_calls
    task_topics = {t.topic for t in app.tasks.values()}
    app.get_task("t00").delay()
    app.flush()
    assert len(calls) == 1 and set(calls[0]) == task_topics
    existing = app.broker.list_topics()
    assert all(existing.get(t) == app.settings.default_partitions for t in task_topics)
    for i in range(1, TYPES):  # the other types are known now: no more admin calls
        app.get_task(f"t{i:02d}").delay()
    app.flush()
    assert len(calls) == 1


def test_worker_creates_its_topics_in_one_call(app_and_calls: tuple[Taskq, list[dict[str, int]]]) -> None:
    app, calls = app_and_calls
    dead = {app.dlq_topic(t.topic) for t in app.tasks.values()}
    wanted = {t.topic for t in app.tasks.values()} | dead | set(app.delay_topics) | {app.events_topic}
    with worker_thread(app, concurrency=2):
        pass
    first = calls[0]
    assert set(first) == wanted  # task topics, dead letters, delay tiers and events: one CreateTopics
    assert not any(wanted & set(later) for later in calls[1:])
    existing = app.broker.list_topics()
    assert {t: existing.get(t) for t in dead} == dict.fromkeys(dead, DLQ_PARTITIONS)
    assert all(existing.get(t) == app.settings.default_partitions for t in wanted - dead)


def test_topics_listing_reads_cluster_metadata_once(app_and_calls: tuple[Taskq, list[dict[str, int]]]) -> None:
    """``taskq topics`` asked for every topic's metadata once per topic and twice more per task topic (the
    listing grew with the square of the topics); now once, and each topic's offsets in batched requests."""
    from taskq.topic_admin import rows

    app, _ = app_and_calls
    topics = app.task_topics()
    app.ensure_topics({**topics, **{app.dlq_topic(t): DLQ_PARTITIONS for t in topics}})
    sent = app.get_task("t03")
    for _ in range(3):
        sent.delay()
    app.flush()
    broker = app.broker
    listed = []
    real = broker.list_topics

    def counting() -> dict[str, int]:
        listed.append(1)
        return real()

    broker.list_topics = counting  # type: ignore[method-assign]
    table = {row.topic: row for row in rows(app)}
    assert len(listed) == 1
    assert {t for t, row in table.items() if row.kind == "task"} == set(topics)
    assert {row.partitions for row in table.values() if row.kind == "dead letters"} == {DLQ_PARTITIONS}
    assert table[sent.topic].messages == 3 and table[sent.topic].lag == 3
    assert all(row.messages == 0 and row.lag == 0 for t, row in table.items() if row.kind == "task" and t != sent.topic)


# KIP-848: a member that joins just after CreateTopics often gets its partitions only at its next heartbeat
# (the broker's group.consumer.heartbeat.interval.ms, 5 s); so did the worker that checked before it joined
@pytest.mark.parametrize(("protocol", "bound"), [("classic", 1.5), ("consumer", 8.0)])
def test_a_worker_started_before_its_topics_exist_takes_them_up_at_once(
        kafka_url: str, redis_url: str, unique: str, protocol: str, bound: float, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """The worker subscribes while it checks its topics: topics the check creates came after the
    subscription, and the group would take them up only at its next metadata refresh (about 2 s, classic)
    or heartbeat (5 s, KIP-848). It has its partitions soon, and runs what is sent in order per key,
    with no "subscribed topic not available" warnings."""
    prefix = f"fresh{protocol}{unique}"
    app = Taskq(prefix, broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.", group=f"{prefix}.group",
                consumer_options={"group.protocol": protocol}, default_partitions=3)
    ran: dict[str, list[int]] = {}
    lock = threading.Lock()

    @app.task(name="fresh.note")
    def note(key: str, i: int) -> int:
        with lock:
            ran.setdefault(key, []).append(i)
        return i

    caplog.set_level(logging.WARNING, logger="taskq")
    try:
        assert note.topic not in app.broker.list_topics()
        started = time.monotonic()
        with worker_thread(app, concurrency=4) as (worker, _):
            while len(worker._assignment) < 3 and time.monotonic() - started < 15:
                time.sleep(0.01)
            took = time.monotonic() - started
            results = [note.apply_async((f"k{i % 4}", i), key=f"k{i % 4}") for i in range(40)]
            app.flush()
            assert [r.get(timeout=15) for r in results] == list(range(40))
        assert took < bound, f"the worker had its partitions {took:.2f} s after its start"
        assert ran == {f"k{k}": list(range(k, 40, 4)) for k in range(4)}
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert "not available" not in capfd.readouterr().err
    finally:
        app.close()


def test_a_worker_whose_topics_a_client_creates_meanwhile_takes_them_up_at_once(
        kafka_url: str, redis_url: str, unique: str) -> None:
    """The worker subscribed before its topics existed, and a client's first send created them before the
    worker's own check looked: the check finds them there and creates nothing, yet the group must take them
    up now, not at its next metadata refresh: 2 s later (a chord whose record expires in 3 s never ran its
    body)."""
    prefix = f"raced{unique}"

    def make_app() -> Taskq:
        app = Taskq(prefix, broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.", group=f"{prefix}.group",
                    default_partitions=3)
        app.task(name="raced.noop")(lambda: None)
        return app

    app, client = make_app(), make_app()
    real = app.broker.ensure_topics

    def a_client_sends_first(topics: dict[str, int], *args: Any, **kwargs: Any) -> set[str]:
        client.ensure_topics(client.task_topics())  # what a client's first send does
        return real(topics, *args, **kwargs)

    app.broker.ensure_topics = a_client_sends_first  # type: ignore[method-assign]
    try:
        assert app.tasks["raced.noop"].topic not in client.broker.list_topics()
        started = time.monotonic()
        with worker_thread(app, concurrency=2) as (worker, _):
            while len(worker._assignment) < 3 and time.monotonic() - started < 15:
                time.sleep(0.01)
            took = time.monotonic() - started
        assert took < 1.5, f"the worker had its partitions {took:.2f} s after its start"
    finally:
        app.close()
        client.close()
