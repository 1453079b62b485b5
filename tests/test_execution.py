"""Unit tests (no Kafka, no Redis): execution.run: a record to an Outcome, without a broker."""

from __future__ import annotations

import time

import pytest

from taskq import Reject, Taskq
from taskq.execution import Kind, run
from taskq.message import TaskMessage
from taskq.results.base import FAILURE, SUCCESS
from tests.unit_support import app, as_record, encoded  # noqa: F401 - app is a fixture


def test_run_success(app: Taskq) -> None:
    @app.task(name="u.add")
    def add(a: int, b: int) -> int:
        return a + b

    outcome = run(app, encoded(TaskMessage("id1", "u.add", [2, 3], {}, b"k")), "w1")
    assert outcome.kind is Kind.SUCCESS
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.result, outcome.result.attempts) == (SUCCESS, 5, 1)
    assert outcome.result.worker == "w1" and outcome.result.task == "u.add"


def test_run_bound_task_sees_request(app: Taskq) -> None:
    @app.task(name="u.me", bind=True)
    def me(self: object) -> dict[str, object]:
        req = self.request  # type: ignore[attr-defined]
        return {"id": req.id, "attempts": req.attempts, "offset": req.offset, "h": req.headers}

    msg = TaskMessage("id9", "u.me", [], {}, b"k", attempts=1, headers={"tenant": "x"})
    outcome = run(app, encoded(msg, offset=42), "w")
    assert outcome.result is not None
    assert outcome.result.result == {"id": "id9", "attempts": 1, "offset": 42, "h": {"tenant": "x"}}
    with pytest.raises(RuntimeError):
        me.request  # noqa: B018 - not running any more


def test_run_autoretry_gives_retry_with_attempts_bumped(app: Taskq) -> None:
    @app.task(name="u.flaky", autoretry_for=(ValueError,), max_retries=2, default_retry_delay=3.0)
    def flaky() -> None:
        raise ValueError("flaky")

    before = time.time()
    outcome = run(app, encoded(TaskMessage("id2", "u.flaky", [], {}, b"k", attempts=1)), "w")
    assert outcome.kind is Kind.RETRY
    assert outcome.message is not None and outcome.message.attempts == 2
    assert outcome.message.id == "id2" and outcome.message.key == b"k"
    assert outcome.message.first_failure is not None and outcome.message.first_failure >= before
    assert outcome.retry_delay == 3.0
    assert outcome.message.eta == pytest.approx(outcome.message.first_failure + 3.0, abs=0.5)
    assert outcome.result is not None and outcome.result.status == "RETRY"
    assert outcome.error_type == "ValueError" and "flaky" in outcome.error_message


def test_run_max_retries_exceeded_is_dead(app: Taskq) -> None:
    @app.task(name="u.flaky2", autoretry_for=(ValueError,), max_retries=2)
    def flaky() -> None:
        raise ValueError("still broken")

    outcome = run(app, encoded(TaskMessage("id3", "u.flaky2", [], {}, b"k", attempts=2)), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.message is None
    assert outcome.result is not None
    assert outcome.result.status == FAILURE and outcome.result.attempts == 3
    assert outcome.result.error == "ValueError: still broken"
    assert "raise ValueError" in (outcome.result.traceback or "")


def test_run_not_autoretried_exception_is_dead(app: Taskq) -> None:
    @app.task(name="u.boom", autoretry_for=(ValueError,))
    def boom() -> None:
        raise KeyError("nope")

    outcome = run(app, encoded(TaskMessage("id4", "u.boom", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD and outcome.error_type == "KeyError"


def test_run_explicit_retry(app: Taskq) -> None:
    @app.task(name="u.again", bind=True, max_retries=1)
    def again(self: object) -> None:
        raise self.retry(countdown=0.25)  # type: ignore[attr-defined]

    first = run(app, encoded(TaskMessage("id5", "u.again", [], {}, b"k")), "w")
    assert first.kind is Kind.RETRY and first.retry_delay == 0.25 and first.message is not None
    second = run(app, encoded(first.message), "w")
    assert second.kind is Kind.DEAD  # max_retries=1 used up


def test_run_reject_is_dead_without_retry(app: Taskq) -> None:
    @app.task(name="u.reject", autoretry_for=(Exception,), max_retries=5)
    def rejecting() -> None:
        raise Reject("poison")

    outcome = run(app, encoded(TaskMessage("id6", "u.reject", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.error_type == "taskq.errors.Reject"
    assert outcome.result is not None and outcome.result.status == FAILURE


def test_run_unknown_task_is_rejected(app: Taskq) -> None:
    outcome = run(app, encoded(TaskMessage("id7", "u.nosuch", [], {}, b"k")), "w")
    assert outcome.kind is Kind.REJECTED
    # a readable id: a FAILURE for the caller's get() (MessageRejected), stored once the letter is sent
    assert outcome.result is not None and outcome.result.status == FAILURE
    assert outcome.result.error.startswith("taskq.errors.MessageRejected: ")
    assert outcome.error_type == "taskq.errors.NotRegistered"
    assert "u.nosuch" in outcome.error_message


def test_run_malformed_is_rejected(app: Taskq) -> None:
    outcome = run(app, as_record(b"\x00garbage", []), "w")
    assert outcome.kind is Kind.REJECTED and outcome.result is None
    assert outcome.error_type == "taskq.message.MalformedMessage"


def test_run_unserializable_return_value_fails(app: Taskq) -> None:
    @app.task(name="u.weird")
    def weird() -> object:
        return object()

    outcome = run(app, encoded(TaskMessage("id8", "u.weird", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.result is not None and outcome.result.status == FAILURE
    assert outcome.error_type == "taskq.errors.SerializationError"
    assert "u.weird" in outcome.error_message
    outcome.result.encode()  # the FAILURE record itself must be storable


def test_run_non_finite_return_value_fails_instead_of_storing_null(app: Taskq) -> None:
    @app.task(name="u.nan")
    def nan() -> object:
        return {"score": float("nan")}

    outcome = run(app, encoded(TaskMessage("id9", "u.nan", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD and outcome.error_type == "taskq.errors.SerializationError"
    assert "NaN and infinite floats" in outcome.error_message
