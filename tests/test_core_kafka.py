"""The core on real Kafka and Redis, with real worker processes."""

from __future__ import annotations

import time

import pytest
import redis

from tests.support import WorkerProcess, env_for, recorder_client, wait_results, wait_until

APP = "tests.apps.recorder"
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def setup(kafka_url: str, redis_clean: str, unique: str):  # noqa: ANN201
    env = env_for(kafka_url, redis_clean, f"core{unique}")
    app, work = recorder_client(env)
    app.ensure_topic(work.topic, 6)
    workers: list[WorkerProcess] = []
    store = redis.Redis.from_url(redis_clean)
    yield env, app, work, workers, store
    for w in workers:
        w.stop()
    app.close()


def start_workers(env: dict[str, str], workers: list[WorkerProcess], count: int, *args: str) -> None:
    for i in range(count):
        workers.append(WorkerProcess(APP, env, *args, name=f"w{i}"))
    for w in workers[-count:]:
        w.wait_for("assigned")
    if count > 1:  # let the group settle so both members hold partitions
        time.sleep(2)


def prefix(env: dict[str, str]) -> str:
    return env["RECORDER_PREFIX"]


def executions(store: redis.Redis, env: dict[str, str]) -> int:
    return int(store.get(f"{prefix(env)}:executions") or 0)


def test_10k_tasks_over_6_partitions_two_workers(setup) -> None:  # noqa: ANN001
    env, app, work, workers, store = setup
    start_workers(env, workers, 2, "-c", "8")
    results = [work.delay(f"k{i % 97}", i) for i in range(10_000)]
    app.flush()
    records = wait_results(app, [r.id for r in results], timeout=180)
    assert all(r is not None and r.status == "SUCCESS" for r in records)
    assert [r.result for r in records] == list(range(10_000))
    by_worker = {k.decode(): int(v) for k, v in store.hgetall(f"{prefix(env)}:by_worker").items()}
    assert set(by_worker) == {"w0", "w1"} and min(by_worker.values()) > 0, by_worker
    assert sum(by_worker.values()) >= 10_000


def test_order_per_key_with_two_workers_concurrency_8(setup) -> None:  # noqa: ANN001
    env, app, work, workers, store = setup
    start_workers(env, workers, 2, "-c", "8")
    keys = [f"user-{k}" for k in range(50)]
    results = [work.delay(key, seq, 0.0005) for seq in range(100) for key in keys]
    app.flush()
    records = wait_results(app, [r.id for r in results], timeout=180)
    assert all(r is not None and r.status == "SUCCESS" for r in records)
    for key in keys:
        order = [int(x) for x in store.lrange(f"{prefix(env)}:order:{key}", 0, -1)]
        assert order == list(range(100)), (key, order, [w.log[-3000:] for w in workers])
    assert int(store.get(f"{prefix(env)}:overlaps") or 0) == 0


def test_kill_9_of_one_worker_loses_nothing(setup) -> None:  # noqa: ANN001
    env, app, work, workers, store = setup
    start_workers(env, workers, 2, "-c", "8")
    results = [work.delay(f"k{i % 200}", i, 0.002) for i in range(5_000)]
    app.flush()
    ids = [r.id for r in results]
    wait_until(lambda: executions(store, env) >= 1_500, 60, "1,500 executions before the kill")
    workers[0].kill()
    records = wait_results(app, ids, timeout=180)
    assert all(r is not None and r.status == "SUCCESS" for r in records)
    runs = executions(store, env)
    assert runs >= 5_000
    print(f"kill -9: 5000 tasks, {runs} executions ({runs - 5000} re-run after the crash)")


def test_sigterm_finishes_in_flight_and_commits_only_finished_work(setup) -> None:  # noqa: ANN001
    env, app, work, workers, store = setup
    start_workers(env, workers, 1, "-c", "4")
    results = [work.delay(f"k{i % 40}", i, 0.005) for i in range(2_000)]
    app.flush()
    ids = [r.id for r in results]
    wait_until(lambda: executions(store, env) >= 300, 60, "300 executions before SIGTERM", interval=0.02)
    assert workers[0].terminate() == 0, workers[0].log
    # Every record below each committed offset has its final result: nothing committed is unfinished.
    committed = app.broker.committed(app.group, work.topic)
    assert committed, "the worker committed nothing"
    consumer = app.broker.consumer(f"{app.group}.audit", [work.topic])
    by_offset: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + 30
    while len(by_offset) < 2_000 and time.monotonic() < deadline:
        for rec in consumer.consume(1000, 0.5):
            by_offset[(rec.partition, rec.offset)] = rec.header("id").decode()
    consumer.close()
    below = [task_id for (p, o), task_id in by_offset.items() if o < committed.get(p, 0)]
    stored = app.backend.get_many(below)
    assert all(r is not None and r.status == "SUCCESS" for r in stored)
    finished_first_run = executions(store, env)
    assert len(below) <= finished_first_run < 2_000
    # A new worker finishes the rest without running anything twice.
    start_workers(env, workers, 1, "-c", "4")
    records = wait_results(app, ids, timeout=120)
    assert all(r is not None and r.status == "SUCCESS" for r in records)
    assert executions(store, env) == 2_000


def test_commits_keep_up_with_a_steady_trickle(setup) -> None:  # noqa: ANN001
    """At a low steady rate every loop has a little to commit; commits must still keep pace."""
    env, app, work, workers, store = setup
    start_workers(env, workers, 1, "-c", "4")
    ids = []
    started = time.monotonic()
    for i in range(4_000):  # ~800 tasks/s for 5 s, each sent on its own
        ids.append(work.delay(f"k{i % 50}", i).id)
        app.producer.poll(0)
        while time.monotonic() - started < i / 800:
            time.sleep(0.0005)
    app.flush()
    records = wait_results(app, ids, timeout=60)
    assert all(r is not None and r.status == "SUCCESS" for r in records)
    behind = sum(app.broker.lag(app.group, work.topic).values())
    print(f"commit lag when every result was stored: {behind}")
    assert behind < 500, f"commits fell {behind} records behind finished work"
    deadline = time.monotonic() + 10
    while sum(app.broker.lag(app.group, work.topic).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sum(app.broker.lag(app.group, work.topic).values()) == 0
