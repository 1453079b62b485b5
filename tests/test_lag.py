"""``taskq lag`` against Kafka's own ConsumerGroupCommand, and on the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq import Taskq
from taskq.inspect import lag
from tests.support import kafka_describe, taskq_lag


@pytest.mark.kafka
def test_lag_equals_kafka_consumer_group_command(kafka_url: str, unique: str) -> None:
    app = Taskq("lag", broker=kafka_url, backend="redis://127.0.0.1:1/0", topic_prefix=f"lag{unique}.",
                group=f"lag{unique}.group")
    topic = app.topic_for("t")
    app.ensure_topics({topic: 3, app.topic_for("idle"): 2})
    producer = app.broker.producer()
    for i in range(300):
        producer.produce(topic, f"k{i}".encode(), b"x")
    assert producer.flush(30) == 0
    consumer = app.broker.consumer(app.group, [topic, app.topic_for("idle")])
    got = []
    while len(got) < 200:
        got.extend(consumer.consume(200 - len(got), 1.0))
    committed: dict[tuple[str, int], int] = {}
    for r in got[:150]:
        committed[(r.topic, r.partition)] = r.offset + 1
    consumer.commit(committed)
    env = {"TASKQ_BROKER_URL": kafka_url, "TASKQ_RESULT_BACKEND": "redis://127.0.0.1:1/0"}
    ours = taskq_lag(env, app.group)
    kafka = kafka_describe(kafka_url, app.group)  # the member is live: idle partitions show "-"
    consumer.close()
    assert {tp for tp in ours if ours[tp][0] is not None} == {tp for tp in kafka if kafka[tp][0] is not None}
    for tp, (current, end, lag_) in kafka.items():
        assert ours[tp][1] == end
        if current is not None:
            assert ours[tp] == (current, end, lag_), tp
    assert sum(row[2] for tp, row in ours.items() if tp[0] == topic) == 300 - 150
    app.close()


def test_lag_on_the_embedded_broker(tmp_path: Path) -> None:
    app = Taskq("lag", local_path=str(tmp_path / "q.db"))

    @app.task(name="lag.t", partitions=2)
    def t(x: int) -> int:
        return x

    for i in range(10):
        t.delay(i)
    app.flush()
    consumer = app.broker.consumer(app.group, [t.topic])
    got = consumer.consume(10, 5.0)
    committed = {(r.topic, r.partition): r.offset + 1 for r in got[:3]}
    consumer.commit(committed)
    consumer.close()
    report = lag(app)
    rows = {p["partition"]: p for p in report["partitions"]}
    assert sum(p["end"] for p in rows.values()) == 10
    for p, row in rows.items():
        assert row["committed"] == committed.get((t.topic, p))
        assert row["lag"] == row["end"] - committed.get((t.topic, p), 0)
    assert report["total"] == sum(p["lag"] for p in rows.values()) == 10 - sum(committed.values())
    app.close()
