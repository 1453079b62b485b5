"""``benchmarks.bench.locate_missing``: for a run that did not finish, where each task without a result
is and whether its group committed past it (a lost task) or not (a stalled one)."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from benchmarks.bench import locate_missing
from taskq.app import Taskq
from taskq.results.base import SUCCESS, ResultRecord

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_locate_missing_tells_a_lost_task_from_a_waiting_one(kafka_url: str, redis_url: str, unique: str) -> None:
    app = Taskq("locate", broker=kafka_url, backend=redis_url, topic_prefix=f"loc{unique}.", group=f"loc{unique}",
                default_partitions=1)

    @app.task(name="loc.noop")
    def noop() -> None:
        return None

    try:
        ids = [noop.delay().id for _ in range(3)]
        app.flush()
        app.backend.store_many([ResultRecord(ids[0], SUCCESS)])
        # the group committed past the second record (offset 1), not past the third (offset 2)
        committer = Consumer({"bootstrap.servers": kafka_url.removeprefix("kafka://"), "group.id": app.group})
        committer.commit(offsets=[TopicPartition(noop.topic, 0, 2)], asynchronous=False)
        committer.close()
        ghost = "0" * 32  # an id never sent

        lines = locate_missing(app, [*ids, ghost])

        assert lines == [
            "3 of 4 tasks without a final result",
            f"  {ids[1]}: {noop.topic}[0]@1, group committed 2 (committed past it: LOST)",
            f"  {ids[2]}: {noop.topic}[0]@2, group committed 2 (not committed yet)",
            f"  {ghost}: not found in any task topic (never delivered to Kafka, or not read in time)",
        ]
    finally:
        app.close()

