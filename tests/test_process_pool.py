"""The processes pool when a task ends its child process."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

import taskq
from tests.support import local_app_module, worker_thread


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

