"""Unit tests (no Kafka, no Redis): AsyncResult: rebuilding remote exceptions."""

from __future__ import annotations

import time
import uuid

import pytest

from taskq import AsyncResult, ConfigError, SerializationError, TaskFailed, Taskq
from taskq.result import rebuild_exception
from taskq.results.base import FAILURE, SUCCESS, ResultRecord
from tests.unit_support import app, CustomError  # noqa: F401 - app is a fixture


def test_rebuild_builtin_exception_with_remote_traceback() -> None:
    rec = ResultRecord("tid", FAILURE, error="ValueError: bad value: really", traceback="Traceback...\nline 3")
    exc = rebuild_exception(rec)
    assert type(exc) is ValueError
    assert str(exc) == "bad value: really"
    assert any("Remote traceback (task tid)" in n and "line 3" in n for n in exc.__notes__)


def test_rebuild_imported_module_exception() -> None:
    exc = rebuild_exception(ResultRecord("t", FAILURE, error=f"{CustomError.__module__}.CustomError: custom"))
    assert type(exc) is CustomError and str(exc) == "custom"
    exc = rebuild_exception(ResultRecord("t", FAILURE, error="taskq.errors.SerializationError: nope"))
    assert type(exc) is SerializationError


@pytest.mark.parametrize("error", ["nosuchmodule_xyz.Boom: kaboom", "NoSuchBuiltinError: x",
                                   "KeyboardInterrupt: stop", "UnicodeDecodeError: needs five args"])
def test_rebuild_unknown_becomes_task_failed(error: str) -> None:
    exc = rebuild_exception(ResultRecord("t", FAILURE, error=error, traceback="remote tb"))
    assert type(exc) is TaskFailed
    assert str(exc) == error
    assert any("remote tb" in n for n in exc.__notes__)


def test_async_result_get_raises_rebuilt_exception(app: Taskq) -> None:
    app.backend.store_many([
        ResultRecord("ok", SUCCESS, {"v": [1, 2]}, attempts=1, date_done=time.time()),
        ResultRecord("bad", FAILURE, None, "ZeroDivisionError: division by zero", "Traceback: remote", attempts=1,
                     date_done=time.time()),
    ])
    assert app.AsyncResult("ok").get(timeout=1) == {"v": [1, 2]}
    result = AsyncResult("bad", app)
    with pytest.raises(ZeroDivisionError) as info:
        result.get(timeout=1)
    assert any("Traceback: remote" in n for n in info.value.__notes__)
    assert isinstance(result.get(timeout=1, propagate=False), ZeroDivisionError)
    assert result.failed() and result.ready() and not result.successful()
    assert result.traceback == "Traceback: remote"


@pytest.mark.parametrize("backend", ["local", pytest.param("redis", marks=pytest.mark.redis)])
def test_nan_timeout_is_refused_not_waited_for_ever(app: Taskq, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "redis":
        app = Taskq("nan", broker="kafka://127.0.0.1:1", backend=request.getfixturevalue("redis_url"))
    result = app.AsyncResult("never-sent")
    with pytest.raises(ConfigError, match="timeout is NaN"):
        result.get(timeout=float("nan"))
    with pytest.raises(ConfigError, match="timeout is NaN"):
        next(iter(result.stream(timeout=float("nan"))))
    with pytest.raises(TimeoutError):
        result.get(timeout=-1)  # a negative timeout is a wait that has already ended
    app.close()


@pytest.mark.parametrize("backend", ["local", pytest.param("redis", marks=pytest.mark.redis)])
def test_store_unless_final_leaves_a_final_result_and_replaces_the_rest(app: Taskq, backend: str,
                                                                        request: pytest.FixtureRequest) -> None:
    """What revoke() writes: in one step with the check, so a result stored just before is never replaced
    (it read the results, then wrote REVOKED over whatever had been stored meanwhile)."""
    from taskq.results.base import REVOKED, STARTED

    if backend == "redis":
        app = Taskq("unless", broker="kafka://127.0.0.1:1", backend=request.getfixturevalue("redis_url"))
    unique = str(time.time_ns())
    app.backend.store_many([ResultRecord(f"done-{unique}", SUCCESS, 1), ResultRecord(f"failed-{unique}", FAILURE),
                            ResultRecord(f"running-{unique}", STARTED), ResultRecord(f"revoked-{unique}", REVOKED)])
    ids = [f"{name}-{unique}" for name in ("done", "failed", "running", "revoked", "unknown")]
    written = app.backend.store_unless_final([ResultRecord(i, REVOKED) for i in ids])
    assert written == ids[2:]
    assert [r.status for r in app.backend.get_many(ids) if r is not None] == [SUCCESS, FAILURE, REVOKED, REVOKED,
                                                                              REVOKED]
    app.close()


@pytest.mark.redis
def test_a_result_key_written_by_another_client_is_a_clear_error(redis_url: str) -> None:
    """A record with a field this version does not know (a newer taskq wrote it) is read; a value that is
    no result record at all is a SerializationError naming the task, not a bare JSON or TypeError."""
    import redis

    from taskq.results.redis import RESULT_PREFIX

    app = Taskq("foreign", broker="kafka://127.0.0.1:1", backend=redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        newer = uuid.uuid4().hex
        admin.set(RESULT_PREFIX + newer, b'{"id": "%s", "status": "SUCCESS", "result": 7, "shard": 3}' % newer.encode())
        assert app.AsyncResult(newer).get(timeout=1) == 7
        for raw in (b"not json", b"[1, 2]", b'{"status": "SUCCESS"}'):
            task_id = uuid.uuid4().hex
            admin.set(RESULT_PREFIX + task_id, raw)
            with pytest.raises(SerializationError, match=f"result of task {task_id}"):
                app.AsyncResult(task_id).get(timeout=1)
            with pytest.raises(SerializationError, match=f"result of task {task_id}"):
                app.AsyncResult(task_id).status
    finally:
        admin.close()
        app.close()


def test_a_timeout_names_the_state_its_wait_read_without_reading_again(app: Taskq,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """get()'s TimeoutError read the state once more, through the client whose reads wait 30 s: on a
    Redis that had just stopped answering it raised that error, 30 s late, instead of TimeoutError."""
    from taskq.results.base import STARTED

    app.backend.store_many([ResultRecord("started-one", STARTED)])
    backend, waited = app.backend, []
    wait, get = backend.wait, backend.get

    def wait_then_stop_answering(task_id: str, timeout: float | None) -> ResultRecord | None:
        record = wait(task_id, timeout)
        waited.append(task_id)
        return record

    def unreachable_after_the_wait(task_id: str) -> ResultRecord | None:
        if waited:
            raise RuntimeError("the backend stopped answering")
        return get(task_id)

    monkeypatch.setattr(backend, "wait", wait_then_stop_answering)
    monkeypatch.setattr(backend, "get", unreachable_after_the_wait)
    with pytest.raises(TimeoutError, match=r"status STARTED"):
        app.AsyncResult("started-one").get(timeout=0.1)
