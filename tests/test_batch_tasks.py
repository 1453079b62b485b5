"""Batch tasks (``@app.task(batch_size=N)``): one call for many records, one outcome per record."""

from __future__ import annotations

from typing import Any

import pytest

from taskq import ConfigError, Taskq
from taskq.brokers.base import Record
from taskq.execution import Kind, run, run_batch
from taskq.message import TaskMessage
from taskq.task import Request


def _record(app: Taskq, task: str, offset: int, *args: Any, key: bytes = b"k", attempts: int = 0) -> Record:
    message = TaskMessage(f"id{offset}", task, list(args), {}, key, attempts=attempts)
    value, headers = message.encode(app.serializers, "json")
    return Record("t", 0, offset, key, value, headers)


@pytest.fixture
def app(tmp_path: Any) -> Taskq:
    return Taskq("batch", local_path=str(tmp_path / "b.db"))


def test_batch_task_gets_every_request_in_one_call(app: Taskq) -> None:
    calls: list[list[Request]] = []

    @app.task(name="double", batch_size=4, batch_wait=0.01)
    def double(requests: list[Request]) -> list[int]:
        calls.append(requests)
        return [r.args[0] * 2 for r in requests]

    assert double.is_batch and double.batch_size == 4 and double.batch_wait == 0.01
    records = [_record(app, "double", i, i) for i in range(3)]
    outcomes = run_batch(app, records, "w")
    assert len(calls) == 1 and [r.offset for r in calls[0]] == [0, 1, 2]
    assert [o.kind for o in outcomes] == [Kind.SUCCESS] * 3
    assert [o.result.result for o in outcomes if o.result] == [0, 2, 4]
    assert [o.result.id for o in outcomes if o.result] == ["id0", "id1", "id2"]
    # a batch task run one record at a time still gets a list
    assert run(app, records[2], "w").result.result == 4  # type: ignore[union-attr]


def test_batch_error_concludes_every_record_by_its_own_attempts(app: Taskq) -> None:
    @app.task(name="flaky", batch_size=8, max_retries=1, autoretry_for=(RuntimeError,))
    def flaky(requests: list[Request]) -> None:
        raise RuntimeError("model unavailable")

    outcomes = run_batch(app, [_record(app, "flaky", 0, 1), _record(app, "flaky", 1, 2, attempts=1)], "w")
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.DEAD]
    assert all("model unavailable" in o.error_message for o in outcomes)


def test_batch_result_count_must_match(app: Taskq) -> None:
    @app.task(name="short", batch_size=8, max_retries=0)
    def short(requests: list[Request]) -> list[int]:
        return [1]

    outcomes = run_batch(app, [_record(app, "short", 0), _record(app, "short", 1)], "w")
    assert [o.kind for o in outcomes] == [Kind.DEAD, Kind.DEAD]
    assert "returned 1 results for 2 requests" in outcomes[0].error_message


def test_undecodable_record_in_a_batch_is_rejected_alone(app: Taskq) -> None:
    @app.task(name="echo", batch_size=8)
    def echo(requests: list[Request]) -> list[Any]:
        return [r.args for r in requests]

    bad = Record("t", 0, 1, b"k", b"not json", [("task", b"echo"), ("id", b"x")])
    outcomes = run_batch(app, [_record(app, "echo", 0, "a"), bad, _record(app, "echo", 2, "b")], "w")
    assert [o.kind for o in outcomes] == [Kind.SUCCESS, Kind.REJECTED, Kind.SUCCESS]
    assert [o.record.offset for o in outcomes] == [0, 1, 2]


def test_batch_options_are_checked(app: Taskq) -> None:
    with pytest.raises(ConfigError):
        app.task(name="bad", batch_size=0)(lambda requests: None)


# --------------------------------------------------------------------------- Batcher (no broker)


def _rec(offset: int, key: bytes, topic: str = "t", partition: int = 0) -> Record:
    return Record(topic, partition, offset, key, b"", [])


def test_batcher_fills_batches_keeps_key_order_and_holds_running_keys() -> None:
    from taskq.worker.batching import Batcher

    submitted: list[list[int]] = []
    batcher = Batcher(lambda batch: submitted.append([r.offset for r in batch]), {"t": (3, 10.0)})
    assert batcher.handles(_rec(0, b"a")) and not batcher.handles(_rec(0, b"a", topic="other"))
    for offset, key in enumerate([b"a", b"a", b"b"]):  # one key twice in one batch: fine, in order
        batcher.add(_rec(offset, key))
    assert submitted == [[0, 1, 2]]
    batcher.add(_rec(3, b"a"))  # "a" runs in the first batch: waits
    batcher.add(_rec(4, b"c"))
    batcher.add(_rec(5, b"a"))
    batcher.due(now=1e12)
    assert submitted == [[0, 1, 2], [4]]
    batcher.release(_rec(0, b"a"))
    assert submitted[-1] == [4], "a still has offset 1 running"
    batcher.release(_rec(1, b"a"))
    batcher.due(now=1e12)
    assert submitted[-1] == [3, 5], "a's waiting records go together, in order, once a is done"
    assert batcher.drop() == []
    batcher.add(_rec(6, b"a"))  # a is running again (3, 5)
    batcher.add(_rec(7, b"d"))
    assert sorted(r.offset for r in batcher.drop({("t", 0)})) == [6, 7]


# --------------------------------------------------------------------------- a worker running a batch task


def test_worker_runs_batch_tasks_in_batches_in_key_order(tmp_path: Any) -> None:
    import threading
    import time

    from tests.support import wait_results, worker_thread

    app = Taskq("batchw", local_path=str(tmp_path / "w.db"), default_partitions=2)
    sizes: list[int] = []
    seen: dict[str, list[int]] = {}
    active: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()

    @app.task(name="collect", batch_size=8, batch_wait=0.05)
    def collect(requests: list[Request]) -> list[int]:
        keys = {r.kwargs["key"] for r in requests}
        with lock:
            overlaps.extend(keys & active)
            active.update(keys)
            sizes.append(len(requests))
        time.sleep(0.02)
        with lock:
            for r in requests:
                seen.setdefault(r.kwargs["key"], []).append(r.kwargs["seq"])
            active.difference_update(keys)
        return [r.kwargs["seq"] * 10 for r in requests]

    sent = [collect.apply_async(kwargs={"key": f"k{i % 5}", "seq": i // 5}, key=f"k{i % 5}") for i in range(60)]
    app.flush()
    with worker_thread(app, tasks=["collect"], concurrency=3) as (worker, _):
        results = wait_results(app, [r.id for r in sent], 60)
    assert [r.result if r else None for r in results] == [(i // 5) * 10 for i in range(60)]
    assert sum(sizes) == 60 and max(sizes) <= 8 and max(sizes) > 1, sizes
    assert all(seqs == sorted(seqs) for seqs in seen.values()), seen
    assert not overlaps, f"a key ran in two batches at once: {overlaps}"
    committed = app.broker.committed(app.group, collect.topic)
    ends = {p: high for p, (_, high) in app.broker.watermarks(collect.topic).items()}
    assert committed == ends, "every offset committed once the batches were durable"
    # the worker's batch size can be overridden (the profile's batch_size): one record per call
    sizes.clear()
    more = [collect.apply_async(kwargs={"key": "k0", "seq": 100 + i}, key="k0") for i in range(5)]
    app.flush()
    with worker_thread(app, tasks=["collect"], concurrency=2, task_batch_size=1):
        wait_results(app, [r.id for r in more], 60)
    assert sizes == [1] * 5


@pytest.mark.parametrize("pool", ["processes", "asyncio"])
def test_batches_run_in_the_processes_and_asyncio_pools(tmp_path: Any, pool: str) -> None:
    import os

    from tests.support import WorkerProcess, wait_results

    db = str(tmp_path / "pool.db")
    client = Taskq("batchapp", local_path=db)
    from tests.apps import batchapp

    task = client.task(name=batchapp.sizes.name, batch_size=8)(batchapp.sizes.fn)
    sent = [task.apply_async((i,)) for i in range(24)]
    client.flush()
    worker = WorkerProcess("tests.apps.batchapp", {"TASKQ_LOCAL_PATH": db}, "--pool", pool, "-c", "2", name=pool)
    try:
        results = wait_results(client, [r.id for r in sent], 120)
        assert worker.terminate(60) == 0
    finally:
        worker.stop()
    values = [r.result for r in results if r is not None and r.status == "SUCCESS"]
    assert [v["n"] for v in values] == list(range(24)), worker.log
    assert max(v["batch"] for v in values) > 1 and all(v["batch"] <= 8 for v in values)
    if pool == "processes":
        assert all(v["pid"] != os.getpid() and v["pid"] != worker.proc.pid for v in values)
