"""Soft and hard time limits end tasks in every pool, and the partition moves on; so does a task's own
KeyboardInterrupt."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

import taskq
from tests.support import local_app_module, worker_thread


@pytest.fixture
def limits(tmp_path, monkeypatch) -> Iterator[ModuleType]:  # noqa: ANN001
    module = local_app_module("tests.apps.limits", str(tmp_path / "limits.db"), monkeypatch)
    yield module
    module.app.close()


def run_worker(module: ModuleType, pool: str, concurrency: int = 2):  # noqa: ANN201 - a context manager
    return worker_thread(module.app, pool=pool, concurrency=concurrency, app_path="tests.apps.limits",
                         batch_size=10, stop_timeout=30.0)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_hard_limit_ends_the_task_and_the_key_moves_on(limits: ModuleType, pool: str) -> None:
    with run_worker(limits, pool):  # on exit: the worker stopped cleanly
        stuck = limits.stuck.apply_async((30,), key="same")
        after = limits.stuck.apply_async((0,), key="same")  # same key: waits for the stuck one
        with pytest.raises(taskq.TimeLimitExceeded):
            stuck.get(timeout=20)
        assert after.get(timeout=20) == "finished"
        assert limits.quick.delay(21).get(timeout=20) == 42  # the pool still has its full strength


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_soft_limit_raises_inside_the_task(limits: ModuleType, pool: str) -> None:
    with run_worker(limits, pool):
        assert limits.polite.delay(10).get(timeout=20) == "cleaned up"


def test_hard_limit_cancels_a_coroutine(limits: ModuleType) -> None:
    with run_worker(limits, "asyncio", concurrency=10):
        with pytest.raises(taskq.TimeLimitExceeded):
            limits.slow_coroutine.delay(30).get(timeout=20)
        assert limits.slow_coroutine.delay(0.01).get(timeout=20) == "finished"


@pytest.mark.parametrize("pool", ["threads", "processes", "asyncio"])
def test_a_tasks_own_keyboard_interrupt_is_its_failure(limits: ModuleType, pool: str) -> None:
    """A KeyboardInterrupt raised by task code ends that task as a failure, as SystemExit does, and the
    worker goes on: stopping every worker that takes its message again would never end."""
    task = limits.interrupted_coroutine if pool == "asyncio" else limits.interrupted
    with run_worker(limits, pool):  # on exit: the worker stopped cleanly
        for i in range(2):
            with pytest.raises(taskq.TaskFailed, match=f"KeyboardInterrupt.*raised by the (task|coroutine) {i}"):
                task.delay(i).get(timeout=20)
        assert limits.quick.delay(21).get(timeout=20) == 42


def test_waiting_for_a_rate_limit_turn_is_not_part_of_the_time_limit(limits: ModuleType) -> None:
    """Ten runs at four a second: the last waits over 2 s for its turn, twice its 1 s time limit; rate
    limits delay work, they never fail it."""
    with run_worker(limits, "asyncio", concurrency=20):
        results = [limits.rate_limited_coroutine.delay(i) for i in range(10)]
        assert [r.get(timeout=30) for r in results] == list(range(10))
        with pytest.raises(taskq.TimeLimitExceeded):  # the limit still ends a run that overruns it
            limits.slow_coroutine.delay(30).get(timeout=20)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_waiting_for_a_rate_limit_turn_is_not_part_of_the_time_limit_in_every_pool(limits: ModuleType,
                                                                                  pool: str) -> None:
    """As for coroutines: ten runs at four a second with a 1 s limit (0.8 s soft) all succeed; the wait
    for a turn used to count, so the last runs were ended by the limit before they began."""
    with run_worker(limits, pool, concurrency=10):
        results = [limits.rate_limited.delay(i) for i in range(10)]
        assert [r.get(timeout=30) for r in results] == list(range(10))
        with pytest.raises(taskq.TimeLimitExceeded):  # the limit still ends a run that overruns it
            limits.stuck.delay(30).get(timeout=20)
