"""The processes pool when a task ends its child process or forks it."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

import taskq
from tests.support import WorkerProcess, local_app_module, worker_thread


@pytest.fixture
def crashy(tmp_path, monkeypatch) -> Iterator[ModuleType]:  # noqa: ANN001
    module = local_app_module("tests.apps.crashy", str(tmp_path / "crashy.db"), monkeypatch)
    yield module
    module.app.close()


def run_worker(module: ModuleType, concurrency: int = 1):  # noqa: ANN201 - a context manager
    return worker_thread(module.app, pool="processes", concurrency=concurrency, app_path="tests.apps.crashy",
                         batch_size=10)


@pytest.mark.parametrize("how,code", [("exit", "3"), ("kill", "-9"), ("segv", "-11")])
def test_a_child_that_dies_fails_its_task_with_its_exit_code(crashy: ModuleType, how: str, code: str) -> None:
    """os._exit, SIGKILL (what the OOM killer sends) and a segfault: WorkerLostError says how the child
    ended (not "exit code None"), and a new child runs the next task."""
    with run_worker(crashy):
        with pytest.raises(taskq.WorkerLostError, match=rf"died \(exit code {code}\)"):
            crashy.die.delay(how).get(timeout=30)
        assert [crashy.echo.delay(i).get(timeout=30) for i in range(3)] == [0, 1, 2]


def test_a_forked_copy_returning_from_the_task_does_not_answer_for_the_child(crashy: ModuleType) -> None:
    """The copy of a child forked by its task returns from the task as well: it must exit, not send its
    result over the child's pipe and read the next tasks from it (the child then waited for it forever)."""
    with run_worker(crashy):
        assert crashy.forks.delay().get(timeout=30) == "parent"
        assert [crashy.echo.delay(i).get(timeout=30) for i in range(3)] == [0, 1, 2]


def test_a_child_that_cannot_be_replaced_stops_the_worker_and_loses_nothing(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The app no longer imports when a dead child is replaced: the worker used to run on with no pool
    process, holding its partitions with the next task never run. It stops with a one-line reason and a
    non-zero exit; the task it could not run is left uncommitted and the next worker runs it."""
    mark = tmp_path / "mark"
    env = {"TASKQ_LOCAL_PATH": str(tmp_path / "brittle.db"), "BRITTLE_MARK": str(mark)}
    brittle = local_app_module("tests.apps.brittle", env["TASKQ_LOCAL_PATH"], monkeypatch, BRITTLE_MARK=str(mark))
    worker = WorkerProcess("tests.apps.brittle", env, "--pool", "processes", "-c", "1")
    try:
        worker.wait_for("assigned")
        with pytest.raises(taskq.WorkerLostError):
            brittle.break_imports.apply_async(key="k").get(timeout=30)
        waiting = brittle.echo.apply_async((7,), key="k")
        assert worker.proc.wait(60) != 0
        last = worker.log.strip().splitlines()[-1]
        assert last == "Error: pool process exited (1) at start (cannot import 'tests.apps.brittle'?)", worker.log
        assert waiting.status == "PENDING"
        mark.unlink()
        second = WorkerProcess("tests.apps.brittle", env, "--pool", "processes", "-c", "1", name="second")
        try:
            assert waiting.get(timeout=60) == 7
        finally:
            second.stop()
    finally:
        worker.stop()
        brittle.app.close()
