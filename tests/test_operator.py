"""A running worker under operators and Kafka clients outside taskq: Kafka's own tools (the Java ones in
``.cache/kafka/libs``) and a transactional producer."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskq import Taskq
from taskq.partitioner import partition_for
from tests.support import wait_until, worker_thread

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
ROOT = Path(__file__).resolve().parent.parent


def kafka_tool(kafka_url: str, tool: str, *args: str) -> str:
    """Run one of Kafka's Java command-line tools (``org.apache.kafka.tools.<tool>``); its stdout."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from services import KAFKA_LIBS, fetch_kafka, java_binary

    fetch_kafka()
    out = subprocess.run([java_binary(), "-cp", f"{KAFKA_LIBS}/*", f"org.apache.kafka.tools.{tool}",
                          "--bootstrap-server", kafka_url.removeprefix("kafka://"), *args],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_partitions_added_by_kafka_topics_are_consumed_soon(kafka_url: str, redis_url: str, unique: str) -> None:
    """``kafka-topics --alter --partitions`` on a task topic while a worker runs: tasks sent to the new
    partitions run within seconds (librdkafka's default metadata refresh left them waiting 5 minutes)."""
    def make_app() -> Taskq:
        app = Taskq(f"op{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"op{unique}.")

        @app.task(name="op.echo", key="key")
        def echo(key: str) -> str:
            return key

        return app

    app = make_app()
    echo = app.tasks["op.echo"]
    app.ensure_topic(echo.topic, 2)
    try:
        with worker_thread(app, concurrency=2, forward_delayed=False):
            assert echo.delay("first").get(timeout=60) == "first"  # the worker has its partitions
            kafka_tool(kafka_url, "TopicCommand", "--alter", "--topic", echo.topic, "--partitions", "4")
            sender = make_app()  # a client started after the change places keys on all four partitions
            try:
                keys = [k for k in (f"k{i}" for i in range(100)) if partition_for(k.encode(), 4) >= 2][:4]
                started = time.monotonic()
                results = [sender.tasks["op.echo"].delay(k) for k in keys]
                assert [r.get(timeout=45) for r in results] == keys
                assert time.monotonic() - started < 45
            finally:
                sender.close()
    finally:
        app.close()


def test_a_deleted_task_topic_stops_nothing_else_and_loses_nothing_when_it_returns(
        kafka_url: str, redis_url: str, unique: str) -> None:
    """``kafka-topics --delete`` on one task topic while a worker runs: the worker keeps running the other
    tasks (it used to exit with "Subscribed topic not available"), and once a client creates the topic
    again every task sent to it runs."""
    def make_app() -> Taskq:
        app = Taskq(f"op{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"op{unique}.")

        @app.task(name="op.kept", partitions=1)
        def kept(n: int) -> int:
            return n

        @app.task(name="op.doomed", partitions=1)
        def doomed(n: int) -> int:
            return n

        return app

    app = make_app()
    kept, doomed = app.tasks["op.kept"], app.tasks["op.doomed"]
    app.ensure_topics({kept.topic: 1, doomed.topic: 1})
    try:
        with worker_thread(app, concurrency=2, forward_delayed=False) as (_, thread):
            assert [r.get(timeout=60) for r in [doomed.delay(n) for n in range(30)]] == list(range(30))
            kafka_tool(kafka_url, "TopicCommand", "--delete", "--topic", doomed.topic)
            time.sleep(12)  # the worker's consumer refreshes its metadata and finds the topic gone
            assert thread.is_alive()
            assert kept.delay(1).get(timeout=30) == 1
            sender = make_app()  # its first send creates the topic again, with one partition
            try:
                again = [sender.tasks["op.doomed"].delay(n) for n in range(40)]
                assert [r.get(timeout=60) for r in again] == list(range(40))
            finally:
                sender.close()
    finally:
        app.close()


def test_dead_letter_and_delay_topics_deleted_while_a_worker_runs_are_created_again(
        kafka_url: str, redis_url: str, unique: str) -> None:
    """``kafka-topics --delete`` on a task's dead-letter topic and on a delay tier while a worker runs: the
    next dead letter and retry create them again (the worker used to retry its send until outage_timeout,
    holding every result back, and then stop)."""
    from taskq.dlq import dead_letters

    app = Taskq(f"op{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"op{unique}.",
                retry_tiers=(1.0,))
    tries: list[int] = []

    @app.task(name="op.fails", max_retries=0)
    def fails(n: int) -> None:
        raise ValueError(f"bad {n}")

    @app.task(name="op.flaky", max_retries=1, autoretry_for=(ValueError,), default_retry_delay=0.5)
    def flaky(n: int) -> int:
        tries.append(n)
        if len(tries) == 1:
            raise ValueError("once")
        return n

    try:
        with worker_thread(app, concurrency=2):
            with pytest.raises(ValueError, match="bad 1"):
                fails.delay(1).get(timeout=60)
            doomed = (app.dlq_topic(fails.topic), *app.delay_topics)
            kafka_tool(kafka_url, "TopicCommand", "--delete", "--topic", "|".join(re.escape(t) for t in doomed))
            failed, retried = fails.delay(2), flaky.delay(7)
            # a message queued before the producer saw its topic go waits topic.metadata.propagation.max.ms (30 s)
            with pytest.raises(ValueError, match="bad 2"):
                failed.get(timeout=90)
            assert retried.get(timeout=90) == 7
        assert [d.error for d in dead_letters(app, "op.fails")] == ["ValueError: bad 2"]  # the topic is new
    finally:
        app.close()


def test_tasks_from_a_transactional_producer_are_committed_to_the_end(kafka_url: str, redis_url: str,
                                                                      unique: str) -> None:
    """Each transaction ends with a marker offset that holds no record: once the worker has nothing left to
    run, it commits past it, so the group's lag is 0 (it stayed 1 per partition: a KEDA scaler never
    scaled to zero)."""
    from confluent_kafka import Producer

    app = Taskq(f"op{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"op{unique}.")

    @app.task(name="op.echo", key="key", partitions=2)
    def echo(key: str, n: int) -> int:
        return n

    app.ensure_topic(echo.topic, 2)
    producer = Producer({"bootstrap.servers": kafka_url.removeprefix("kafka://"), "partitioner": "murmur2_random",
                         "transactional.id": f"op{unique}"})
    producer.init_transactions(30)
    ids = []
    for batch in range(3):
        producer.begin_transaction()
        for i in range(4):
            ids.append(f"txn-{unique}-{batch}-{i}")
            producer.produce(echo.topic, key=f"k{i}".encode(), value=f'[["k{i}", {batch}], {{}}]'.encode(),
                             headers=[("id", ids[-1].encode()), ("task", b"op.echo")])
        producer.commit_transaction(30)
    try:
        with worker_thread(app, concurrency=2, forward_delayed=False):
            assert [app.AsyncResult(i).get(timeout=60) for i in ids] == [b for b in range(3) for _ in range(4)]
            ends = {p: hi for p, (_lo, hi) in app.broker.watermarks(echo.topic).items()}
            wait_until(lambda: app.broker.committed(app.group, echo.topic) == ends, 10, "commits past the markers")
    finally:
        app.close()
