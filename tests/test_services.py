"""The test services themselves work: Redis answers, Kafka stores and serves messages,
and the 3-broker cluster keeps accepting acks=all writes with one node down."""

from __future__ import annotations

import time

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from services import KafkaCluster, RedisServer, redis_ping


def _bootstrap(url: str) -> str:
    return url.removeprefix("kafka://")


def _create_topic(bootstrap: str, name: str, partitions: int, replication: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=30,
    )
    futures[name].result(timeout=60)


def _produce(bootstrap: str, topic: str, values: list[str], **conf: object) -> None:
    """Produce ``values`` (keyed by index) and raise if any delivery failed."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, **conf})
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i), value=value, on_delivery=on_delivery)
    assert producer.flush(60) == 0, "messages still in flight after 60 s"
    assert not errors, errors


def _consume(bootstrap: str, topic: str, group: str, count: int, timeout: float = 60) -> list[str]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    got: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.value() or b"").decode())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_redis_answers_ping(redis_clean: str) -> None:
    client = redis.Redis.from_url(redis_clean)
    assert client.ping()
    client.set("taskq:probe", "1")
    assert client.get("taskq:probe") == b"1"


def test_redis_restarts_on_same_port(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.stop()
    assert not redis_ping(redis_server.port)
    redis_server.restart()
    assert redis_server.url == redis_url
    assert redis.Redis.from_url(redis_url).ping()


@pytest.mark.timeout(180)
def test_kafka_round_trip(kafka_url: str, unique: str) -> None:
    bootstrap = _bootstrap(kafka_url)
    topic = f"svc-{unique}"
    _create_topic(bootstrap, topic, partitions=3, replication=1)
    sent = [f"m{i}" for i in range(10)]
    _produce(bootstrap, topic, sent)
    assert sorted(_consume(bootstrap, topic, f"g-{unique}", len(sent))) == sorted(sent)


@pytest.mark.timeout(300)
def test_cluster_survives_one_broker_down(kafka_cluster3: KafkaCluster, unique: str) -> None:
    bootstrap = kafka_cluster3.bootstrap
    topic = f"ha-{unique}"
    _create_topic(bootstrap, topic, partitions=1, replication=3)
    acks_all = {"acks": "all", "enable.idempotence": True}
    _produce(bootstrap, topic, [f"before{i}" for i in range(5)], **acks_all)

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    leader = md.topics[topic].partitions[0].leader
    kafka_cluster3.kill(leader)
    assert not kafka_cluster3.running(leader)
    # 2 of 3 replicas remain >= min.insync.replicas=2, so acks=all writes succeed.
    _produce(bootstrap, topic, [f"during{i}" for i in range(10)], **acks_all)

    kafka_cluster3.restart(leader)
    assert kafka_cluster3.running(leader)
    got = _consume(bootstrap, topic, f"g-{unique}", 15)
    assert sorted(got) == sorted([f"before{i}" for i in range(5)] + [f"during{i}" for i in range(10)])
