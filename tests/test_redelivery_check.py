"""Which records the worker looks up for a result stored already (``skip_finished``), on a real Kafka.

A record an earlier owner of its partition can have been given (below the partition's end when it was
assigned here) is looked up, and so is a send of taskq's own that a crash can repeat (a delayed or
retried task, a canvas follow-up); a client's send that arrived after the assignment is not, so it costs
no Redis round trip on its way to the pool.
"""

from __future__ import annotations

import pytest

from taskq import Taskq
from taskq.results.base import SUCCESS, ResultRecord
from tests.support import wait_results, wait_until, worker_thread

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_lookups_cover_what_an_earlier_owner_or_a_repeated_send_can_have_brought(
        kafka_url: str, redis_url: str, unique: str) -> None:
    app = Taskq("recheck", broker=kafka_url, backend=redis_url, topic_prefix=f"rc{unique}.", group=f"rc{unique}")
    ran: list[int] = []

    @app.task(name="rc.work", partitions=2)
    def work(n: int) -> int:
        ran.append(n)
        return n

    def finished_before(task_id: str) -> str:
        app.backend.store_many([ResultRecord(task_id, SUCCESS, result=-1)])
        return task_id

    try:
        # left by a worker that stored the result and died before its commit: not run again
        work.apply_async((1,), key="k", task_id=finished_before(f"old{unique}"))
        app.flush()
        with worker_thread(app, concurrency=2) as (worker, _):
            assert worker._consumer is not None
            consumer = worker._consumer
            wait_until(lambda: len(consumer.unseen_from()) == 2, 30, "the assigned partitions' ends")
            assert sorted(consumer.unseen_from().values()) == [0, 1]  # the old record's partition, the other
            # a client sending an id again after the assignment: a new task, not a redelivery
            work.apply_async((2,), key="k", task_id=finished_before(f"again{unique}"))
            # a canvas follow-up sent again by a parent run twice: its original finished
            work.apply_async((3,), key="k", task_id=finished_before(f"follow{unique}"), parent_id=f"p{unique}")
            # a delayed task forwarded twice: its first copy finished
            work.apply_async((4,), key="k", task_id=finished_before(f"late{unique}"), countdown=0.2)
            last = work.apply_async((5,), key="k", countdown=0.4)  # forwarded after it, in the same order
            app.flush()
            assert wait_results(app, [last.id], 60)[0] is not None
        assert ran == [2, 5]
        assert consumer.unseen_from() == {}  # forgotten with the partitions at the leave
    finally:
        app.close()


def test_a_result_key_that_is_no_record_does_not_stop_the_worker(kafka_url: str, redis_url: str, unique: str) -> None:
    """A redelivered record whose result key another client overwrote with something that is no result
    record: the look-up does not stop the worker; the task runs and its result replaces the bad value."""
    import redis

    from taskq.results.redis import RESULT_PREFIX

    app = Taskq("recheck", broker=kafka_url, backend=redis_url, topic_prefix=f"rb{unique}.", group=f"rb{unique}")
    ran: list[int] = []

    @app.task(name="rb.work", partitions=1)
    def work(n: int) -> int:
        ran.append(n)
        return n

    admin = redis.Redis.from_url(redis_url)
    try:
        admin.set(RESULT_PREFIX + f"bad{unique}", b"not a record")
        first = work.apply_async((1,), key="k", task_id=f"bad{unique}")  # below the end at the assignment
        app.flush()
        with worker_thread(app, concurrency=2) as (_, thread):
            wait_until(lambda: admin.get(RESULT_PREFIX + first.id) != b"not a record" or not thread.is_alive(), 60,
                       "the task's own result")
            assert thread.is_alive(), "the worker stopped"
            second = work.apply_async((2,), key="k")
            app.flush()
            assert wait_results(app, [second.id], 60)[0] is not None
        assert ran == [1, 2]
        assert first.get(timeout=1) == 1
    finally:
        admin.close()
        app.close()
