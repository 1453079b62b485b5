"""An asynchronous commit that does not land is committed again.

The broker refuses a commit during a rebalance, for instance. The worker used to count an asynchronous
commit as landed when it sent it, so a partition whose commit point then stayed put kept its lag until
its next revoke (seen as a partition with every task final and nothing committed).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from taskq import Taskq
from taskq.brokers.base import Consumer, Record, TopicPartition
from taskq.worker import Worker
from tests.support import wait_until
from tests.unit_support import app  # noqa: F401 - fixture


@pytest.mark.kafka
def test_kafka_reports_a_refused_asynchronous_commit_once(kafka_url: str, unique: str) -> None:
    kafka_app = Taskq("commits", broker=kafka_url, topic_prefix=f"cr{unique}.", group=f"cr{unique}")
    topic = f"cr{unique}.t"
    kafka_app.broker.ensure_topics({topic: 1})
    seen_by_own: list[tuple[bool, list[TopicPartition]]] = []  # an application's on_commit still hears
    consumer = kafka_app.broker.consumer(kafka_app.group, [topic], on_commit=lambda err, tps: seen_by_own.append(
        (err is None and all(tp.error is None for tp in tps), [(tp.topic, tp.partition) for tp in tps])))
    try:
        wait_until(lambda: consumer.consume(10, 0.1) == [] and bool(consumer.assignment()), 30, "the assignment")
        missing = (f"cr{unique}.missing", 0)
        consumer.commit({(topic, 0): 0}, asynchronous=True)  # lands
        consumer.commit({missing: 3}, asynchronous=True)  # refused: the broker knows no such topic
        failed: list[TopicPartition] = []

        def reported() -> bool:
            consumer.consume(10, 0.05)  # serves the commits' answers
            failed.extend(consumer.failed_commits())
            return bool(failed)
        wait_until(reported, 15, "the refused commit reported")
        assert failed == [missing]
        consumer.consume(10, 0.3)
        assert consumer.failed_commits() == []
        assert kafka_app.broker.committed(kafka_app.group, topic) == {0: 0}
        assert sorted(seen_by_own) == [(False, [missing]), (True, [(topic, 0)])]
    finally:
        consumer.close()
        kafka_app.close()


class CommitLog(Consumer):
    """Records what is committed; reports the partitions in ``failing`` as failed once."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.failing: list[TopicPartition] = []

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        return []

    def commit(self, offsets: dict[TopicPartition, int], asynchronous: bool = False) -> None:
        self.commits.append(dict(offsets))

    def failed_commits(self) -> list[TopicPartition]:
        failed, self.failing = self.failing, []
        return failed

    def assignment(self) -> list[TopicPartition]:
        return []

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        pass

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_worker_commits_a_failed_point_again(app: Taskq) -> None:  # noqa: F811 - the fixture
    @app.task(name="cr.work")
    def work() -> None:
        return None

    worker = Worker(app)
    consumer = CommitLog()
    tp = (work.topic, 0)
    for offset in (0, 1):
        worker._offsets.take(tp, offset)
        worker._offsets.finish(tp, offset)

    def commit() -> None:
        worker._last_commit = float("-inf")  # past the commit interval
        worker._commit(consumer)
    commit()
    commit()  # nothing moved: nothing sent
    consumer.failing = [tp]
    commit()  # the first did not land: sent again
    commit()
    assert consumer.commits == [{tp: 2}, {tp: 2}]
