"""On real Kafka and Redis: the worker stops taking records once the payload bytes taken but unfinished
reach ``prefetch_bytes`` (large payloads behind a slow task do not fill its memory), and goes on once
they finish."""

from __future__ import annotations

import threading
import time

import pytest

from taskq import Taskq
from tests.support import wait_results, wait_until, worker_thread

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
SIZE = 100_000
TASKS = 40
BOUND = 1_000_000
BATCH = 4


def test_payload_bytes_in_flight_stay_bounded(kafka_url: str, redis_url: str, unique: str) -> None:
    app = Taskq(f"bytes{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"bytes{unique}.")
    gate = threading.Event()

    @app.task(name="doc", partitions=1)
    def doc(text: str) -> int:
        gate.wait(60)
        return len(text)

    ids = [doc.delay("x" * SIZE).id for _ in range(TASKS)]  # 4 MB waiting
    app.flush()
    try:
        with worker_thread(app, concurrency=2, batch_size=BATCH, prefetch_bytes=BOUND) as (worker, _):
            wait_until(lambda: worker._in_flight_bytes >= BOUND, 30, "the worker to take a megabyte")
            most = 0
            deadline = time.monotonic() + 1.0  # the bound holds while nothing finishes
            while time.monotonic() < deadline:
                most = max(most, worker._in_flight_bytes)
                time.sleep(0.01)
            assert BOUND <= most <= BOUND + BATCH * (SIZE + 100)  # one poll batch may go past it
            assert worker._in_flight < TASKS
            gate.set()
            results = wait_results(app, ids, 60)
            assert [r.result if r else None for r in results] == [SIZE] * TASKS
    finally:
        gate.set()
        app.close()


def test_a_full_fetch_queue_is_looked_at_again_within_20_ms() -> None:
    """librdkafka's default waits 1 s once its local queue holds queued.max.messages.kbytes of large
    records, which stalled drains of 100 KB documents (``taskq bench growth --what payload``)."""
    from taskq.brokers.kafka import consumer_config

    assert consumer_config({})["fetch.queue.backoff.ms"] == 20
    assert consumer_config({"group.protocol": "consumer"})["fetch.queue.backoff.ms"] == 20
    assert consumer_config({"fetch.queue.backoff.ms": 500})["fetch.queue.backoff.ms"] == 500
