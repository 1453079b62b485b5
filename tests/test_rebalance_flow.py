"""Records keep flowing to a member through a rebalance, exactly once per group, on a real Kafka.

After every rebalance callback (and every ``resume()``) the Kafka consumer wakes the threads that fetch its
partitions (``wake_fetchers``): librdkafka pauses all assigned partitions while a callback is pending and
resumes them without a wake-up, so an idle fetcher slept up to 1 s and the worker ran nothing meanwhile
(``taskq bench rebalance`` measures the gap). These tests check the path that does it delivers every
record once, in order per partition, across a join and a leave; how long the gap is, is the benchmark's job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer as RdConsumer

from taskq.brokers import kafka as kafka_module
from taskq.brokers.base import Record, TopicPartition
from taskq.brokers.kafka import CONSUMER_DEFAULTS, KafkaBroker, consumer_config, wake_fetchers

PATIENCE = 90.0


@pytest.fixture
def broker(kafka_url: str) -> Iterator[KafkaBroker]:
    b = KafkaBroker(kafka_url, connect_timeout=30)
    yield b
    b.close()


def topic_with_records(broker: KafkaBroker, prefix: str, partitions: int, values: list[bytes]) -> tuple[str, str]:
    """A new topic holding ``values`` (keyed k0, k1, ...), and a new group's name."""
    topic, group = f"{prefix}-{uuid.uuid4().hex[:10]}", f"{prefix}-g-{uuid.uuid4().hex[:10]}"
    broker.ensure_topics({topic: partitions})
    producer = broker.producer()
    for i, value in enumerate(values):
        producer.produce(topic, f"k{i}".encode(), value)
    producer.flush(30)
    return topic, group


def test_classic_group_notices_a_rebalance_within_a_fifth_of_a_second() -> None:
    config = consumer_config({})
    assert config["heartbeat.interval.ms"] == CONSUMER_DEFAULTS["heartbeat.interval.ms"] == 200
    assert config["session.timeout.ms"] >= 30 * config["heartbeat.interval.ms"]


def test_wake_fetchers_ignores_what_it_cannot_wake(broker: KafkaBroker) -> None:
    consumer = RdConsumer({"bootstrap.servers": broker.config["bootstrap.servers"], "group.id": "wake-test"})
    try:
        wake_fetchers(consumer, [])
        wake_fetchers(consumer, [(f"no-such-topic-{uuid.uuid4().hex[:8]}", 0)])
    finally:
        consumer.close()


def test_wake_fetchers_asks_for_metadata_only_until_every_broker_is_woken(broker: KafkaBroker) -> None:
    """Many topics on one broker: one metadata request and one watermark query, not one per topic."""
    topics = [f"wake-{uuid.uuid4().hex[:10]}" for _ in range(5)]
    broker.ensure_topics(dict.fromkeys(topics, 2))
    consumer = RdConsumer({"bootstrap.servers": broker.config["bootstrap.servers"], "group.id": "wake-test"})
    calls: list[str] = []

    class Counting:
        def list_topics(self, topic: str, timeout: float) -> object:
            calls.append(f"metadata {topic}")
            return consumer.list_topics(topic, timeout=timeout)

        def get_watermark_offsets(self, tp: object, timeout: float, cached: bool) -> object:
            calls.append("watermarks")
            return consumer.get_watermark_offsets(tp, timeout=timeout, cached=cached)

    try:
        wake_fetchers(Counting(), [(t, p) for t in topics for p in (0, 1)])  # type: ignore[arg-type]
    finally:
        consumer.close()
    assert calls == [f"metadata {topics[0]}", "watermarks"]


def test_member_keeps_consuming_through_a_join_and_a_leave(broker: KafkaBroker) -> None:
    """A consumes while records are produced; B joins, then leaves; every record arrives once, in order."""
    topic, group = f"flow-{uuid.uuid4().hex[:10]}", f"flow-g-{uuid.uuid4().hex[:10]}"
    broker.ensure_topics({topic: 4})
    producer = broker.producer()
    positions: dict[TopicPartition, int] = {}
    got: list[Record] = []
    events: list[str] = []

    def commit_revoked(consumer_name: str) -> object:
        def on_revoke(parts: list[TopicPartition]) -> None:
            events.append(f"{consumer_name}-revoked")
            member = a if consumer_name == "a" else b
            done = {tp: positions[tp] for tp in parts if tp in positions}
            if member is not None and done:
                member.commit(done)
        return on_revoke

    def take(member: object, n: int = 200) -> None:
        for record in member.consume(n, 0.05):  # type: ignore[attr-defined]
            got.append(record)
            positions[(record.topic, record.partition)] = record.offset + 1

    sent = 0

    def produce(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            producer.produce(topic, f"k{sent % 40}".encode(), b"%d" % sent)
            sent += 1
        producer.flush(30)

    a = broker.consumer(group, [topic], on_revoke=commit_revoked("a"),  # type: ignore[arg-type]
                        on_assign=lambda parts: events.append("a-assigned"))
    b = None
    try:
        produce(100)
        deadline = time.monotonic() + PATIENCE
        while len(got) < 100 and time.monotonic() < deadline:
            take(a)
        assert len(got) == 100, "the first member never got the first records"
        b = broker.consumer(group, [topic], on_revoke=commit_revoked("b"),  # type: ignore[arg-type]
                            on_assign=lambda parts: events.append("b-assigned"))
        deadline = time.monotonic() + PATIENCE
        while not (a.assignment() and b.assignment()) and time.monotonic() < deadline:
            take(a)
            take(b)
        assert a.assignment() and b.assignment(), "the group never split between two members"
        after_join = len(got)
        produce(400)  # spread over all four partitions: both members have some
        deadline = time.monotonic() + PATIENCE
        while len(got) < after_join + 400 and time.monotonic() < deadline:
            take(a)
            take(b)
        kept_by_a = {(r.topic, r.partition) for r in got[after_join:] if (r.topic, r.partition) in a.assignment()}
        assert kept_by_a, "the first member ran nothing of its own partitions after the join"
        b.close()  # a graceful leave: B commits in its revoke, then leaves the group
        b = None
        produce(200)
        deadline = time.monotonic() + PATIENCE
        while len(got) < 700 and time.monotonic() < deadline:
            take(a)
        assert len(a.assignment()) == 4, "the first member did not take the leaver's partitions"
    finally:
        a.close()
        if b is not None:
            b.close()
        producer.close()
    values = sorted(int(r.value or b"") for r in got)
    assert values == list(range(sent)), f"lost or repeated records: {len(values)} for {sent} sent"
    by_partition: dict[int, list[int]] = {}
    for r in got:
        by_partition.setdefault(r.partition, []).append(r.offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values())
    assert "a-revoked" in events and "b-revoked" in events


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_new_group_starts_where_auto_offset_reset_points(broker: KafkaBroker, reset: str) -> None:
    """Partitions with nothing committed are assigned at the reset position (explicitly, at assignment);
    a member joining later starts at what the group committed."""
    topic, group = topic_with_records(broker, "reset", 3, [b"old%d" % i for i in range(30)])
    producer = broker.producer()
    first = broker.consumer(group, [topic], **{"auto.offset.reset": reset})
    got: list[Record] = []
    try:
        deadline = time.monotonic() + PATIENCE
        while len(first.assignment()) < 3 and time.monotonic() < deadline:
            got += first.consume(100, 0.05)
        assert len(first.assignment()) == 3
        # "latest" looks the end up after the assignment: new records are sent until some arrived in
        # every partition (so the group commits a position in each)
        sent_new = 0
        deadline = time.monotonic() + PATIENCE
        while (len({r.partition for r in got if (r.value or b"").startswith(b"new")}) < 3
               and time.monotonic() < deadline):
            for _ in range(3):
                producer.produce(topic, f"k{sent_new}".encode(), b"new%d" % sent_new)
                sent_new += 1
            producer.flush(30)
            got += first.consume(100, 0.2)
        expected = sent_new + (30 if reset == "earliest" else 0)
        deadline = time.monotonic() + PATIENCE
        while len(got) < expected and time.monotonic() < deadline:
            got += first.consume(100, 0.05)
        first.commit({(r.topic, r.partition): r.offset + 1 for r in got})
    finally:
        first.close()
    values = [(r.value or b"").decode() for r in got]
    old = sorted(v for v in values if v.startswith("old"))
    assert old == (sorted(f"old{i}" for i in range(30)) if reset == "earliest" else []), old
    if reset == "earliest":
        assert sorted(v for v in values if v.startswith("new")) == sorted(f"new{i}" for i in range(sent_new))
    else:  # the records sent before the end was looked up may be behind it; none after it is lost
        assert len(set(values)) == len(values) and values, values
    for i in range(10):
        producer.produce(topic, f"k{i}".encode(), b"later%d" % i)
    producer.flush(30)
    second = broker.consumer(group, [topic], **{"auto.offset.reset": "earliest"})
    later: list[Record] = []
    try:
        deadline = time.monotonic() + PATIENCE
        while len(later) < 10 and time.monotonic() < deadline:
            later += second.consume(100, 0.05)
        later += second.consume(100, 0.5)
    finally:
        second.close()
        producer.close()
    assert sorted((r.value or b"").decode() for r in later) == sorted(f"later{i}" for i in range(10))


def test_every_client_connects_again_without_waiting_out_the_default_back_off() -> None:
    """A new librdkafka client drops its bootstrap connection once it knows the broker's id and connects
    again, at most every reconnect.backoff.ms / 2: with the default (100) each new client's first request
    waited 50 ms (a worker's topic check and its group join each paid it). The URL can still set it."""
    assert KafkaBroker("kafka://127.0.0.1:9092").config["reconnect.backoff.ms"] == 20
    assert KafkaBroker("kafka://127.0.0.1:9092?reconnect.backoff.ms=100").config["reconnect.backoff.ms"] == "100"
    assert KafkaBroker("kafka://127.0.0.1:9092", **{"reconnect.backoff.ms": 5}).config["reconnect.backoff.ms"] == 5


def test_records_taken_after_an_assignment_do_not_wait_for_the_wake_and_close_waits_for_it(
        broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wake's requests run beside the records already taken; the consumer is closed only after them."""
    topic, group = topic_with_records(broker, "wake-bg", 2, [b"%d" % i for i in range(20)])
    release, waking, woken = threading.Event(), threading.Event(), threading.Event()

    def slow_wake(consumer: object, partitions: list[TopicPartition]) -> None:
        waking.set()
        release.wait(PATIENCE)
        woken.set()

    monkeypatch.setattr(kafka_module, "wake_fetchers", slow_wake)
    member = broker.consumer(group, [topic])
    got: list[Record] = []
    deadline = time.monotonic() + PATIENCE
    while len(got) < 20 and time.monotonic() < deadline:
        got += member.consume(50, 0.1)
    assert waking.is_set() and not woken.is_set()  # every record arrived while the wake was still held
    assert sorted(int(r.value or b"") for r in got) == list(range(20))
    threading.Timer(0.3, release.set).start()
    member.close()
    assert woken.is_set()  # the close waited for the wake's requests
