"""Kafka 4's consumer group protocol (KIP-848) as an option beside the classic cooperative one."""

from __future__ import annotations

import pytest

from taskq import ConfigError, Taskq
from taskq.brokers.kafka import CONSUMER_DEFAULTS, consumer_config
from tests.support import worker_thread


def test_consumer_protocol_leaves_out_the_classic_settings() -> None:
    classic = consumer_config({})
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"
    modern = consumer_config({"group.protocol": "consumer"})
    assert modern["group.protocol"] == "consumer"
    assert not {"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"} & set(modern)
    assert modern["fetch.wait.max.ms"] == CONSUMER_DEFAULTS["fetch.wait.max.ms"]
    with pytest.raises(ConfigError, match="group.protocol=consumer"):
        consumer_config({"group.protocol": "consumer", "session.timeout.ms": 6000})


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_worker_runs_tasks_with_either_group_protocol(kafka_url: str, redis_url: str, unique: str,
                                                      protocol: str) -> None:
    prefix = f"gp{protocol}{unique}"
    app = Taskq("gp", broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.", group=f"{prefix}.group",
                consumer_options={"group.protocol": protocol}, connect_timeout=30, default_partitions=3)

    @app.task(name="gp.double")
    def double(x: int) -> int:
        return 2 * x

    try:
        with worker_thread(app, concurrency=4):
            results = [double.delay(i) for i in range(30)]
            app.flush()
            assert [r.get(timeout=60) for r in results] == [2 * i for i in range(30)]
    finally:
        app.close()
