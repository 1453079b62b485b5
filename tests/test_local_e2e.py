"""End to end on the embedded local broker (one SQLite file): workers in a thread and in a process.

This module is also the app module of the worker subprocess (``-A tests.test_local_e2e:sub_app``):
``sub_app`` takes its file from ``TASKQ_LOCAL_PATH``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskq
from taskq import Taskq
from taskq.message import TaskMessage
from taskq.results.base import FAILURE, STARTED, SUCCESS
from tests.support import WorkerProcess, read_records, start_worker, wait_results, wait_until, worker_thread

APP_PATH = "tests.test_local_e2e:sub_app"


class AppError(Exception):
    """Raised by a task; importable by name, so ``get()`` rebuilds it."""


def build_app(local_path: str | None = None, name: str = "e2e", **settings: object) -> Taskq:
    """The test app; the same task names in the test process and in the worker subprocess."""
    app = Taskq(name, local_path=local_path, **settings)

    @app.task(name="e2e.add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="e2e.fail")
    def fail(message: str) -> None:
        raise AppError(message)

    @app.task(name="e2e.nap")
    def nap(i: int, sleep: float, journal: str) -> int:
        """Sleep, then append ``i`` to ``journal`` (one line per execution, across processes)."""
        time.sleep(sleep)
        with open(journal, "a") as f:
            f.write(f"{i}\n")
        return i

    @app.task(name="e2e.retry_once", bind=True)
    def retry_once(self: taskq.Task, value: str) -> str:
        if self.request.attempts == 0:
            raise self.retry(countdown=0.5)
        return value

    @app.task(name="e2e.always_fails", autoretry_for=(ValueError,), max_retries=2, default_retry_delay=0.1)
    def always_fails(n: int) -> None:
        raise ValueError(f"always fails {n}")

    return app


sub_app = build_app()  # lazy: opens nothing until used, so importing this module is harmless


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "q.db")


@pytest.fixture
def app(db: str) -> Iterator[Taskq]:
    a = build_app(db)
    yield a
    a.close()


def committed_total(app: Taskq, topic: str) -> int:
    return sum(app.broker.committed(app.group, topic).values())


# --------------------------------------------------------------------------- in-thread worker


def test_500_tasks_all_succeed(app: Taskq) -> None:
    add = app.tasks["e2e.add"]
    with worker_thread(app, concurrency=8) as (worker, _):
        results = [add.delay(i, i * 10) for i in range(500)]
        values = [r.get(timeout=30) for r in results]
    assert values == [i * 11 for i in range(500)]
    assert all(r.status == SUCCESS for r in results)
    assert worker.stats.succeeded == 500 and worker.stats.dead == 0 and worker.stats.rejected == 0
    assert {r.record.attempts for r in results} == {1}  # type: ignore[union-attr]
    assert committed_total(app, add.topic) == 500  # every finished record committed on stop


def test_failure_propagates_with_type_and_remote_traceback(app: Taskq) -> None:
    fail = app.tasks["e2e.fail"]
    with worker_thread(app, concurrency=2):
        result = fail.delay("it broke")
        with pytest.raises(AppError, match="it broke") as info:
            result.get(timeout=15)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"Remote traceback (task {result.id})" in notes
    assert 'raise AppError(message)' in notes
    assert result.status == FAILURE and result.failed()
    assert isinstance(result.result, AppError)
    # a FAILURE without retries is also dead-lettered
    [dead] = read_records(app, app.dlq_topic(fail.topic), 1)
    assert dead.header("id") == result.id.encode() and dead.header("dead-reason") == b"dead"


def test_get_timeout_on_never_run_task(app: Taskq) -> None:
    result = app.tasks["e2e.add"].delay(1, 2)
    started = time.monotonic()
    with pytest.raises(taskq.TimeoutError) as info:
        result.get(timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2.0, elapsed
    assert isinstance(info.value, TimeoutError)  # also the builtin, like Celery
    assert result.id in str(info.value) and "PENDING" in str(info.value)
    assert result.status == "PENDING" and not result.ready()


def test_retry_with_countdown_then_success(app: Taskq) -> None:
    retry_once = app.tasks["e2e.retry_once"]
    with worker_thread(app, concurrency=2) as (worker, _):
        started = time.monotonic()
        result = retry_once.delay("finally")
        assert result.get(timeout=20) == "finally"
        elapsed = time.monotonic() - started
    assert result.record is not None and result.record.attempts == 2
    assert elapsed >= 0.45, "the retry ran before its countdown"
    assert worker.stats.retried == 1 and worker.stats.forwarded >= 1


def test_autoretry_exhausted_ends_failure_and_dead_letter(app: Taskq) -> None:
    always = app.tasks["e2e.always_fails"]
    with worker_thread(app, concurrency=2) as (worker, _):
        result = always.delay(7)
        with pytest.raises(ValueError, match="always fails 7"):
            result.get(timeout=30)
    assert result.record is not None
    assert result.record.status == FAILURE and result.record.attempts == 3  # first run + max_retries=2
    assert worker.stats.retried == 2 and worker.stats.dead == 1
    dead = read_records(app, f"{always.topic}.dlq", 1)
    assert len(dead) == 1
    letter = dead[0]
    assert letter.header("id") == result.id.encode()
    assert letter.header("error-type") == b"ValueError"
    assert letter.header("dead-reason") == b"dead"
    assert letter.header("attempts") == b"2"
    assert letter.header("original-topic") == always.topic.encode()
    original_offset = int(letter.header("original-offset") or b"-1")
    assert original_offset >= 2  # the third copy of the message on the task topic
    assert b"always fails 7" in (letter.header("error-traceback") or b"")
    assert TaskMessage.decode(letter, app.serializers).args == [7]


def test_retry_of_pickle_task_keeps_its_serializer(db: str) -> None:
    app = build_app(db, accept_content=("json", "pickle"))

    @app.task(name="e2e.pickled", bind=True, serializer="pickle")
    def pickled(self: taskq.Task, items: set[int]) -> list[int]:
        if self.request.attempts == 0:
            raise self.retry(countdown=0.2)
        return sorted(items)

    try:
        with worker_thread(app, concurrency=2) as (worker, _):
            result = pickled.delay({3, 1, 2})  # a set: not JSON
            assert result.get(timeout=20) == [1, 2, 3]
        assert result.record is not None and result.record.attempts == 2
        assert worker.stats.retried == 1
    finally:
        app.close()


def test_skip_finished_disabled_still_runs_tasks(db: str) -> None:
    app = build_app(db, skip_finished=False)
    try:
        add = app.tasks["e2e.add"]
        with worker_thread(app, concurrency=2):
            assert [add.delay(i, 1).get(timeout=15) for i in range(5)] == [1, 2, 3, 4, 5]
    finally:
        app.close()


def test_stop_with_backlog_is_prompt_and_commits_only_finished(app: Taskq, tmp_path: Path) -> None:
    nap = app.tasks["e2e.nap"]
    journal = str(tmp_path / "journal.txt")
    results = [nap.delay(i, 0.03, journal) for i in range(300)]
    ids = [r.id for r in results]
    with worker_thread(app, concurrency=2) as (worker, _):
        _wait_for_done(app, ids, 20, 30)
        started = time.monotonic()
        worker.stop()
    stop_took = time.monotonic() - started
    assert stop_took < 5.0, f"stop took {stop_took:.1f} s with a backlog (stop_timeout is 20 s)"
    done = sum(1 for r in app.backend.get_many(ids) if r is not None and r.ready)
    assert 20 <= done < 300
    assert worker.stats.abandoned > 0
    assert committed_total(app, nap.topic) == done
    # a second worker finishes the rest: nothing lost, nothing run twice
    with worker_thread(app, concurrency=8):
        records = wait_results(app, ids, timeout=30)
    assert all(r is not None and r.status == SUCCESS for r in records)
    assert sorted(int(x) for x in Path(journal).read_text().split()) == list(range(300))


def _wait_for_done(app: Taskq, ids: list[str], at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done = sum(1 for r in app.backend.get_many(ids) if r is not None and r.ready)
        if done >= at_least:
            return done
        assert time.monotonic() < deadline, f"only {done} tasks done after {timeout} s"
        time.sleep(0.02)


def test_a_full_last_tier_partition_does_not_hold_back_a_task_due_sooner(db: str, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """Delays beyond the last tier share it with tasks due sooner. Once a tier partition held MAX_HELD
    records it was no longer read, so a task due in seconds waited for tasks due in an hour. Records
    not due within the tier's span that were read a span ago now go back to its end (so a record is sent
    again at most once per span), and the partition is read on."""
    from taskq.worker import forwarder

    monkeypatch.setattr(forwarder, "MAX_HELD", 5)
    app = Taskq("tiers", local_path=db, retry_tiers=(1.0, 3.0))

    @app.task(name="tiers.t", key="k")
    def t(k: str, i: int) -> int:
        return i

    try:
        with worker_thread(app, concurrency=2):
            far = [t.apply_async(("u", i), countdown=3600) for i in range(8)]
            time.sleep(1.0)  # the forwarder holds five of them and stops reading the partition
            near = t.apply_async(("u", 99), countdown=2)
            assert near.get(timeout=15) == 99
            time.sleep(6.0)
            tier = app.delay_topic(3600)
            written = sum(hi for _, hi in app.broker.watermarks(tier).values())
        assert all(r.status == "PENDING" for r in far)
        assert written <= 9 + 8 * 4, written  # each far record sent again at most once per 3 s span
    finally:
        app.close()


@pytest.mark.parametrize("part", ["finisher", "forwarder"])
def test_a_failing_worker_thread_stops_the_worker_and_loses_nothing(app: Taskq, monkeypatch: pytest.MonkeyPatch,
                                                                    part: str) -> None:
    """An unexpected error (a bug) in the finisher or the forwarder ended that thread only: the worker ran on,
    storing and committing nothing more, or never sending a delayed task back. It now stops the worker."""
    from taskq.errors import TaskqError
    from taskq.worker.finisher import Finisher
    from taskq.worker.forwarder import Forwarder

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(*((Finisher, "_store", broken) if part == "finisher" else (Forwarder, "_forms", broken)))
    add = app.tasks["e2e.add"]
    _worker, thread, errors = start_worker(app, concurrency=2, stop_timeout=5.0)
    result = add.apply_async((1, 2), countdown=0.2 if part == "forwarder" else None)
    thread.join(30)
    assert not thread.is_alive(), "the worker ran on"
    assert isinstance(errors[0], TaskqError) and "RuntimeError('a bug')" in str(errors[0])
    assert result.status == "PENDING"
    monkeypatch.undo()
    with worker_thread(app, concurrency=2):
        assert result.get(timeout=30) == 3  # left uncommitted: the next worker runs it


# --------------------------------------------------------------------------- worker in another process


@pytest.fixture
def process_env(db: str) -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"TASKQ_LOCAL_PATH": db, "PYTHONPATH": path}


def test_worker_process_serves_delay(app: Taskq, process_env: dict[str, str]) -> None:
    worker = WorkerProcess(APP_PATH, process_env, "-c", "4", name="proc-w")
    try:
        worker.wait_for("assigned", timeout=30)
        add, fail = app.tasks["e2e.add"], app.tasks["e2e.fail"]
        results = [add.delay(i, 1) for i in range(50)]
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(50)]
        assert {r.record.worker for r in results} == {"proc-w"}  # type: ignore[union-attr]
        with pytest.raises(AppError, match="remote"):
            fail.delay("remote").get(timeout=30)
        assert worker.terminate(timeout=30) == 0, worker.log
    finally:
        worker.stop()


def test_sigterm_worker_process_loses_nothing(app: Taskq, process_env: dict[str, str], tmp_path: Path) -> None:
    nap = app.tasks["e2e.nap"]
    journal = str(tmp_path / "journal.txt")
    worker = WorkerProcess(APP_PATH, process_env, "-c", "4", name="term-w")
    try:
        worker.wait_for("assigned", timeout=30)
        results = [nap.delay(i, 0.05, journal) for i in range(300)]
        ids = [r.id for r in results]
        _wait_for_done(app, ids, 40, 30)
        started = time.monotonic()
        code = worker.terminate(timeout=40)
        took = time.monotonic() - started
        assert code == 0, worker.log
        assert took < 10, f"SIGTERM took {took:.1f} s to stop the worker:\n{worker.log[-3000:]}"
    finally:
        worker.stop()
    final = [r for r in app.backend.get_many(ids) if r is not None and r.ready]
    assert all(r.status == SUCCESS for r in final)
    assert 40 <= len(final) < 300, len(final)
    assert committed_total(app, nap.topic) == len(final)
    # everything not committed is still there for the next worker; nothing runs twice
    with worker_thread(app, concurrency=8):
        records = wait_results(app, ids, timeout=30)
    assert all(r is not None and r.status == SUCCESS for r in records)
    assert sorted(int(x) for x in Path(journal).read_text().split()) == list(range(300))
    assert committed_total(app, nap.topic) == 300


def _start_long_task(app: Taskq, process_env: dict[str, str], journal: str, *args: str) -> tuple[WorkerProcess, str]:
    """A worker process (``args`` added) running ``nap`` for two minutes; the task's id."""
    worker = WorkerProcess(APP_PATH, {**process_env, "TASKQ_TRACK_STARTED": "true"}, "-c", "2", *args, name="cold-w")
    worker.wait_for("assigned", timeout=30)
    result = app.tasks["e2e.nap"].delay(7, 120, journal)
    wait_until(lambda: result.status == STARTED, 30, "the long task to start")
    return worker, result.id


@pytest.mark.parametrize("pool", ["threads", "processes", "asyncio"])
def test_second_signal_leaves_at_once_and_the_running_task_stays_uncommitted(
        app: Taskq, process_env: dict[str, str], tmp_path: Path, pool: str) -> None:
    """Celery's cold shutdown: the first SIGTERM waits for the running task, a second one does not; the
    task is neither stored nor committed, so the next worker runs it."""
    journal = str(tmp_path / "journal.txt")
    worker, task_id = _start_long_task(app, process_env, journal, "--pool", pool)
    try:
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert worker.proc.poll() is None, f"the first signal did not wait for the running task:\n{worker.log}"
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(20) == 0, worker.log
        assert time.monotonic() - started < 10, worker.log
    finally:
        worker.stop()
    assert "1 task(s) still running when told to stop at once" in worker.log
    assert committed_total(app, app.tasks["e2e.nap"].topic) == 0
    assert app.AsyncResult(task_id).status == STARTED
    assert not Path(journal).exists()  # the task's process or thread did not run on after the exit


def test_stop_timeout_bounds_the_wait_for_running_tasks(app: Taskq, process_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.txt")
    worker, task_id = _start_long_task(app, process_env, journal, "--stop-timeout", "1")
    try:
        started = time.monotonic()
        assert worker.terminate(timeout=20) == 0, worker.log
        assert 1 <= time.monotonic() - started < 10, worker.log
    finally:
        worker.stop()
    assert "1 task(s) still running after stop_timeout (1 s)" in worker.log
    assert committed_total(app, app.tasks["e2e.nap"].topic) == 0
    assert app.AsyncResult(task_id).status == STARTED


def test_second_signal_to_the_supervisor_reaches_its_workers(app: Taskq, process_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    """``taskq worker --processes 2``: the supervisor forwards the second signal too, and every process exits."""
    journal = str(tmp_path / "journal.txt")
    worker, _task_id = _start_long_task(app, process_env, journal, "--processes", "2")
    try:
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert worker.proc.poll() is None, worker.log
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(20) == 0, worker.log
    finally:
        worker.stop()
    children = [int(pid) for pid in re.findall(r"started cold-w-\d \(pid (\d+)\)", worker.log)]
    assert len(children) == 2, worker.log
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "1 task(s) still running when told to stop at once" in worker.log
    assert committed_total(app, app.tasks["e2e.nap"].topic) == 0


# --------------------------------------------------------------------------- control on the embedded broker


def test_revoke_skips_a_queued_task_and_a_later_copy_of_it(app: Taskq, tmp_path: Path) -> None:
    """Revocations work on the embedded broker as on Kafka: a task queued behind a slow one of its key
    is skipped while the worker runs on, and the same id sent again later is skipped by a new worker."""
    nap, add = app.get_task("e2e.nap"), app.get_task("e2e.add")
    journal = tmp_path / "journal"
    with worker_thread(app, concurrency=2):
        slow = nap.apply_async((1, 1.5, str(journal)), key="k")
        queued = nap.apply_async((2, 0.0, str(journal)), key="k")  # behind the slow one: same key
        queued.revoke()
        after = add.apply_async((3, 4), key="k")
        assert after.get(timeout=30) == 7 and slow.get(timeout=30) == 1
        assert queued.status == "REVOKED"
    again = nap.apply_async((2, 0.0, str(journal)), key="k", task_id=queued.id)
    with worker_thread(app, concurrency=2):
        assert add.apply_async((5, 6), key="k").get(timeout=30) == 11  # behind the copy: it was dealt with
    assert again.status == "REVOKED"
    assert journal.read_text().split() == ["1"]  # the revoked task never ran


def test_replay_from_an_offset_runs_new_tasks_with_provenance(app: Taskq) -> None:
    from taskq.replay import H_REPLAY_OF, replay, window

    add = app.get_task("e2e.add")
    app.ensure_topic(add.topic, 2)
    originals = [add.apply_async((i, i), key=f"k{i % 2}") for i in range(6)]
    with worker_thread(app, concurrency=2):
        assert [r.get(timeout=30) for r in originals] == [2 * i for i in range(6)]
        ends = [hi for _lo, hi in app.broker.watermarks(add.topic).values()]
        win = window(app, "e2e.add", from_offset=1)
        sent = replay(app, win)
        assert len(sent) == win.size == sum(max(0, hi - 1) for hi in ends) > 0  # all but offset 0 of each
        results = wait_results(app, [new_id for _, new_id in sent], 30)
    by_id = {r.id: r for r in originals}
    for (record, new_id), result in zip(sent, results):
        original = by_id[record.header("id").decode()]
        assert new_id != original.id and result is not None and result.status == SUCCESS
        assert result.result == original.result and record.header("id") == original.id.encode()
    replayed = read_records(app, add.topic, 6 + len(sent))
    assert sorted(r.header(H_REPLAY_OF).decode() for r in replayed if r.header(H_REPLAY_OF)) == sorted(
        r.header("id").decode() for r, _ in sent)
