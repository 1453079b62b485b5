"""Hooks dispatch and the root/parent headers: no Kafka, no Redis (the embedded broker in tmp_path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from taskq import ConfigError, Taskq
from taskq.brokers.base import Record
from taskq.execution import Kind, Outcome, run
from taskq.hooks import KINDS, Hook, HookSet
from taskq.worker.stats import StatsHook, WorkerStats
from taskq.message import H_PARENT_ID, H_ROOT_ID, TaskMessage
from taskq.results.base import ResultRecord
from taskq.serialization import Registry

JSON_ONLY = Registry(("json",))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Taskq]:
    a = Taskq("hooks", local_path=str(tmp_path / "q.db"))
    yield a
    a.close()


def record(offset: int = 0) -> Record:
    return Record("t", 0, offset, b"k", b"[[],{}]", [("id", b"x"), ("task", b"t")])


class Counting(Hook):
    def __init__(self) -> None:
        self.received_n = 0
        self.kinds: list[Kind] = []

    def received(self, records: Sequence[Record], now: float) -> None:
        self.received_n += len(records)

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        self.kinds.extend(o.kind for o in outcomes)


class Raising(Hook):
    calls = 0

    def received(self, records: Sequence[Record], now: float) -> None:
        Raising.calls += 1
        raise RuntimeError("hook bug")


def test_only_overridden_kinds_are_bound_and_the_rest_are_noops() -> None:
    counting = Counting()
    hooks = HookSet([Hook(), counting])
    assert {k for k in KINDS if hooks.overridden(k)} == {"received", "finished"}
    assert hooks.started.__name__ == "_noop" and hooks.worker_heartbeat.__name__ == "_noop"
    hooks.received([record(0), record(1)], 1.0)
    hooks.finished([Outcome(record(), Kind.SUCCESS), Outcome(record(), Kind.DEAD)])
    assert counting.received_n == 2 and counting.kinds == [Kind.SUCCESS, Kind.DEAD]


def test_a_raising_hook_is_logged_once_per_kind_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    counting = Counting()
    hooks = HookSet([Raising(), counting])
    with caplog.at_level(logging.ERROR, logger="taskq.hooks"):
        for _ in range(3):
            hooks.received([record()], 1.0)
    assert Raising.calls == 3 and counting.received_n == 3
    logged = [r for r in caplog.records if "Raising.received raised RuntimeError" in r.getMessage()]
    assert len(logged) == 1


def test_stats_hook_counts_outcomes_by_kind() -> None:
    stats = WorkerStats()
    hooks = HookSet([StatsHook(stats)])
    hooks.received([record(0), record(1), record(2)], 1.0)
    hooks.finished([Outcome(record(), Kind.SUCCESS), Outcome(record(), Kind.RETRY), Outcome(record(), Kind.DEAD)])
    hooks.finished([Outcome(record(), Kind.SUCCESS), Outcome(record(), Kind.REJECTED)])
    hooks.skipped([record()], [ResultRecord('x', 'SUCCESS')])
    assert (stats.received, stats.succeeded, stats.retried, stats.dead, stats.rejected, stats.skipped) == (
        3, 2, 1, 1, 1, 1)
    assert stats.processed == 6 and stats.by_kind == {"success": 2, "retry": 1, "dead": 1, "rejected": 1}


def test_add_hook_refuses_what_is_not_a_hook(app: Taskq) -> None:
    assert app.add_hook(h := Counting()) is h and app.hooks == [h]
    with pytest.raises(ConfigError, match="not a taskq.hooks.Hook"):
        app.add_hook(object())  # type: ignore[arg-type]


def test_root_and_parent_ids_round_trip_and_default_to_own_id() -> None:
    plain = TaskMessage("id-1", "t", [], {}, b"k")
    value, headers = plain.encode(JSON_ONLY)
    names = [h for h, _ in headers]
    assert H_ROOT_ID not in names and H_PARENT_ID not in names  # absent root = the own id
    back = TaskMessage.decode(Record("t", 0, 0, b"k", value, headers), JSON_ONLY)
    assert back.root == "id-1" and back.parent_id is None
    child = TaskMessage("id-2", "t", [], {}, b"k", root_id="id-0", parent_id="id-1")
    value, headers = child.encode(JSON_ONLY)
    assert (H_ROOT_ID, b"id-0") in headers and (H_PARENT_ID, b"id-1") in headers
    assert TaskMessage.decode(Record("t", 0, 0, b"k", value, headers), JSON_ONLY) == child


def test_a_task_sent_from_a_running_task_gets_it_as_parent_and_its_root(app: Taskq) -> None:
    @app.task(name="u.child")
    def child() -> None: ...

    @app.task(name="u.parent", bind=True)
    def parent(self: object) -> str:
        return child.delay().id

    value, headers = TaskMessage("p1", "u.parent", [], {}, b"k", root_id="r0").encode(JSON_ONLY)
    outcome = run(app, Record("t", 0, 0, b"k", value, headers), "w")
    app.flush()
    assert outcome.kind is Kind.SUCCESS and outcome.result is not None
    sent = [r for r in app.broker.consumer("g", [child.topic]).consume(10, 5.0)]
    assert len(sent) == 1
    message = TaskMessage.decode(sent[0], JSON_ONLY)
    assert (message.id, message.root_id, message.parent_id) == (outcome.result.result, "r0", "p1")
    assert app.current_request.get() is None  # reset after the run
    assert child.delay().id  # outside a task: no parent
