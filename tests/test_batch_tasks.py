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
