"""Tasks for the canvas tests: arithmetic, a journal of runs, failures, a retry, error callbacks.

``build_app(**settings)`` gives a fresh app (tests on the embedded broker, workers in threads);
the module-level ``app`` is configured by ``TASKQ_*`` for worker processes. Runs are journaled as
lines in ``CANVAS_JOURNAL`` (a file, one O_APPEND write per run, safe across processes) so tests see
every execution, duplicates included.

``CANVAS_CRASH_FLAG``: the path of a flag file; when set, the first process to mark a chord fired
creates the file and kills itself with SIGKILL right there (after the body was sent and
acknowledged, before the chord is marked and the header task's offset committed).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import taskq
from taskq import Taskq
from taskq.results.base import ResultBackend


class CanvasError(Exception):
    """Raised by ``boom``; importable by name, so ``get()`` rebuilds it."""


def journal(line: str) -> None:
    path = os.environ.get("CANVAS_JOURNAL")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


def read_journal(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def build_app(name: str = "canvasapp", **settings: Any) -> Taskq:
    app = Taskq(name, **settings)

    @app.task(name="canvas.add")
    def add(x: int, y: int) -> int:
        journal(f"add {x} {y}")
        return x + y

    @app.task(name="canvas.mul")
    def mul(x: int, y: int) -> int:
        journal(f"mul {x} {y}")
        return x * y

    @app.task(name="canvas.tsum")
    def tsum(values: list[int], *extra: int) -> int:
        journal(f"tsum {values}")
        return sum(values) + sum(extra)

    @app.task(name="canvas.collect")
    def collect(values: Any) -> Any:
        journal(f"collect {values}")
        return values

    @app.task(name="canvas.boom")
    def boom(*args: Any) -> None:
        journal("boom")
        raise CanvasError(f"boom {list(args)}")

    @app.task(name="canvas.flaky", bind=True)
    def flaky(self: taskq.Task, x: int) -> int:
        """Asks for a retry on its first attempt, then returns ``x + 1``."""
        journal(f"flaky {x} attempt={self.request.attempts}")
        if self.request.attempts == 0:
            raise self.retry(countdown=0.2)
        return x + 1

    @app.task(name="canvas.step", key="user")
    def step(previous: Any, user: str, seq: int, sleep: float = 0.0) -> int:
        """One step of a user's workflow: journals ``step <user> <seq>``; keyed by user."""
        if sleep:
            time.sleep(sleep)
        journal(f"step {user} {seq}")
        return seq

    @app.task(name="canvas.errback")
    def errback(task_id: str, error: str, label: str = "") -> str:
        journal(f"errback {label} {task_id} {error}")
        return task_id

    @app.task(name="canvas.body")
    def body(values: list[Any], label: str = "") -> list[Any]:
        """A chord body that journals each run (kill tests count them)."""
        journal(f"body {label} {values} pid={os.getpid()}")
        return values

    @app.task(name="canvas.nap")
    def nap(x: int, sleep: float) -> int:
        time.sleep(sleep)
        journal(f"nap {x}")
        return x

    @app.task(name="canvas.fan", bind=True)
    def fan(self: taskq.Task, n: int) -> None:
        """Replaces itself by a chord summing ``add(i, i)`` for i < n."""
        from taskq.canvas import chord

        journal(f"fan {n}")
        raise self.replace(chord([add.s(i, i) for i in range(n)], tsum.s()))

    return app


app = build_app()

if os.environ.get("CANVAS_CRASH_FLAG"):
    _flag = os.environ["CANVAS_CRASH_FLAG"]
    _backend_type = type(app.backend)
    _mark = _backend_type.chord_set_state

    def _crash_once(self: ResultBackend, chord_id: str, state: str) -> None:
        if state == "fired" and not os.path.exists(_flag):
            with open(_flag, "w") as f:
                f.write(f"{os.getpid()} {chord_id}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        _mark(self, chord_id, state)

    _backend_type.chord_set_state = _crash_once  # type: ignore[method-assign]
