"""Soft and hard time limits end tasks in every pool, and the partition moves on."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from types import ModuleType

import pytest

import taskq
from taskq import Worker


@pytest.fixture
def limits(tmp_path, monkeypatch) -> Iterator[ModuleType]:  # noqa: ANN001
    monkeypatch.setenv("TASKQ_LOCAL_PATH", str(tmp_path / "limits.db"))
    monkeypatch.delenv("TASKQ_BROKER_URL", raising=False)
    monkeypatch.delenv("TASKQ_RESULT_BACKEND", raising=False)
    import tests.apps.limits as module

    module = importlib.reload(module)
    yield module
    module.app.close()


def run_worker(module: ModuleType, pool: str, concurrency: int = 2) -> tuple[Worker, threading.Thread]:
    worker = Worker(module.app, pool=pool, concurrency=concurrency, app_path="tests.apps.limits", batch_size=10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_hard_limit_ends_the_task_and_the_key_moves_on(limits: ModuleType, pool: str) -> None:
    worker, thread = run_worker(limits, pool)
    try:
        stuck = limits.stuck.apply_async((30,), key="same")
        after = limits.stuck.apply_async((0,), key="same")  # same key: waits for the stuck one
        with pytest.raises(taskq.TimeLimitExceeded):
            stuck.get(timeout=20)
        assert after.get(timeout=20) == "finished"
        assert limits.quick.delay(21).get(timeout=20) == 42  # the pool still has its full strength
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_soft_limit_raises_inside_the_task(limits: ModuleType, pool: str) -> None:
    worker, thread = run_worker(limits, pool)
    try:
        assert limits.polite.delay(10).get(timeout=20) == "cleaned up"
    finally:
        worker.stop()
        thread.join(30)


def test_hard_limit_cancels_a_coroutine(limits: ModuleType) -> None:
    worker, thread = run_worker(limits, "asyncio", concurrency=10)
    try:
        with pytest.raises(taskq.TimeLimitExceeded):
            limits.slow_coroutine.delay(30).get(timeout=20)
        assert limits.slow_coroutine.delay(0.01).get(timeout=20) == "finished"
    finally:
        worker.stop()
        thread.join(30)
