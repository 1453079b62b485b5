"""Canvas on the embedded local broker (worker in a thread): chains, groups, chords, callbacks, the tree.

Also the Celery failures that must not happen here: a retry inside a chain keeps the rest of the
chain (#6631); one failure in nested chains/groups does not leave a chord waiting (#9674); error
callbacks on a chord header run as documented (#8211).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import Taskq
from taskq.canvas import Chord, GroupResult, Signature, chain, chord, from_dict, group, signature
from taskq.errors import BudgetExceeded, ConfigError, SerializationError, TaskRevoked
from taskq.results.base import FAILURE, REVOKED, SUCCESS
from taskq.serialization import JSON
from tests.apps.canvasapp import CanvasError, build_app, read_journal
from tests.support import wait_until, worker_thread

TIMEOUT = 30


@pytest.fixture(params=["local", "kafka"])
def app(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str,
        ) -> Iterator[Taskq]:
    """The canvas app on the embedded broker, or on real Kafka with results in real Redis."""
    for name in ("TASKQ_BROKER_URL", "TASKQ_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    common = {"default_partitions": 2, "retry_tiers": (0.1, 1.0)}
    if request.param == "local":
        a = build_app(local_path=str(tmp_path / "q.db"), **common)
    else:
        kafka, redis = request.getfixturevalue("kafka_url"), request.getfixturevalue("redis_url")
        a = build_app(broker=kafka, backend=redis, topic_prefix=f"cv{unique}.", group=f"cv{unique}",
                      producer_options={"linger.ms": 0}, connect_timeout=30, **common)
    yield a
    a.close()


@pytest.fixture
def worker(app: Taskq) -> Iterator[None]:
    with worker_thread(app, concurrency=4, batch_size=50):
        yield


def t(app: Taskq, name: str):  # noqa: ANN201 - a Task
    return app.tasks[f"canvas.{name}"]


# --------------------------------------------------------------------------- signatures (no broker)


@pytest.mark.parametrize("app", ["local"], indirect=True)
def test_signature_options_and_json_round_trip(app: Taskq) -> None:
    add, boom, errback = t(app, "add"), t(app, "boom"), t(app, "errback")
    sig = add.s(2, y=3).set(key="u1", countdown=5, headers={"trace": "abc"})
    sig.link(add.s(10))
    sig.link_error(errback.si("x", "y"))
    frozen_id = sig.freeze()
    again = signature(sig.to_json(), app)
    assert isinstance(again, Signature) and again == sig and again.id == frozen_id
    assert again.options["key"] == "u1" and again.options["headers"] == {"trace": "abc"}
    assert t(app, "mul").si(1, 2).immutable and not add.s(1).immutable
    with pytest.raises(ConfigError, match="unknown signature option"):
        add.s(1).set(bogus=3)
    workflow = chain(add.s(1, 1), group(add.s(1), boom.s()), chord([add.s(1, 2), add.s(3, 4)], t(app, "tsum").s()))
    workflow.freeze()
    rebuilt = from_dict(workflow.to_dict(), app)
    assert rebuilt.to_dict() == workflow.to_dict()
    assert (add.s(1, 1) | add.s(2) | add.s(3)).to_dict()["chain"][2]["args"] == [3]
    assert isinstance(group(add.s(1, 1), add.s(2, 2)) | t(app, "tsum").s(), Chord)
    assert add.s(2)(3) == 5  # called in place


# --------------------------------------------------------------------------- chains


def test_chain_passes_each_result_on_and_its_result_is_the_last(app: Taskq, worker: None, journal: str) -> None:
    add, mul = t(app, "add"), t(app, "mul")
    workflow = chain(add.s(1, 2), add.s(3), mul.s(10))
    result = workflow.apply_async()
    assert result.id == workflow.tasks[-1].id
    assert result.get(timeout=TIMEOUT) == 60
    root = app.AsyncResult(workflow.tasks[0].id)
    assert [c.id for c in root.children] == [workflow.tasks[1].id]
    assert [c.id for c in root.children[0].children] == [result.id]
    assert result.record.root_id == root.id and result.record.parent_id == workflow.tasks[1].id
    pipe = (add.s(1, 1) | add.s(1) | add.s(1)).delay()
    assert pipe.get(timeout=TIMEOUT) == 4


def test_chain_failure_stops_the_chain_and_shows_on_its_result(app: Taskq, worker: None, journal: str) -> None:
    add, boom = t(app, "add"), t(app, "boom")
    workflow = chain(add.s(1, 1), boom.s(), add.s(5), add.s(6))
    result = workflow.apply_async()
    with pytest.raises(CanvasError, match=r"boom \[2\]"):
        result.get(timeout=TIMEOUT)
    third = app.AsyncResult(workflow.tasks[2].id)
    assert third.status == FAILURE and third.record.meta["failed_by"] == workflow.tasks[1].id
    assert read_journal(journal) == ["add 1 1", "boom"]


def test_retry_inside_a_chain_keeps_the_rest_of_the_chain(app: Taskq, worker: None, journal: str) -> None:
    """Celery #6631: the retried message carries the rest of the chain."""
    add, flaky, mul = t(app, "add"), t(app, "flaky"), t(app, "mul")
    result = chain(add.s(1, 1), flaky.s(), mul.s(3)).apply_async()
    assert result.get(timeout=TIMEOUT) == 9
    assert read_journal(journal) == ["add 1 1", "flaky 2 attempt=0", "flaky 2 attempt=1", "mul 3 3"]


def test_immutable_signature_ignores_the_previous_result(app: Taskq, worker: None) -> None:
    add = t(app, "add")
    assert chain(add.s(1, 1), add.si(10, 10), add.s(1)).apply_async().get(timeout=TIMEOUT) == 21


# --------------------------------------------------------------------------- groups and chords


def test_group_results_in_call_order(app: Taskq, worker: None) -> None:
    add, nap = t(app, "add"), t(app, "nap")
    result = group([nap.s(0, 0.3), add.s(1, 1), nap.s(2, 0.1), add.s(3, 3)]).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 4
    assert result.get(timeout=TIMEOUT) == [0, 2, 2, 6]
    assert result.ready() and result.successful() and result.completed_count() == 4
    assert [c.id for c in app.AsyncResult(result.id).children] == [r.id for r in result.results]


def test_chord_body_runs_once_with_results_in_order(app: Taskq, worker: None, journal: str) -> None:
    nap, body = t(app, "nap"), t(app, "body")
    workflow = chord([nap.s(i, 0.05 * (5 - i)) for i in range(5)], body.s(label="c"))
    result = workflow.apply_async()
    assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    assert [line.split(" pid=")[0] for line in read_journal(journal) if line.startswith("body")] == [
        "body c [0, 1, 2, 3, 4]"]
    tree = app.AsyncResult(workflow.id)
    assert tree.status == SUCCESS and tree.result == [0, 1, 2, 3, 4]
    assert [c.id for c in tree.children] == [s.id for s in workflow.header.tasks] + [result.id]


def test_group_inside_a_chain_becomes_a_chord(app: Taskq, worker: None) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    assert chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).apply_async().get(timeout=TIMEOUT) == 7
    assert chain(add.s(1, 1), group(add.s(1), add.s(2))).apply_async().get(timeout=TIMEOUT) == [3, 4]
    nested = chord([chain(add.s(1, 1), add.s(1)), group(add.s(2, 2), add.s(3, 3))], t(app, "collect").s())
    assert nested.apply_async().get(timeout=TIMEOUT) == [3, [4, 6]]


def test_an_empty_group_that_something_waits_for_is_done_at_once(app: Taskq, worker: None) -> None:
    """No header task reports for an empty group, so what follows it used to wait for ever."""
    add, tsum, collect = t(app, "add"), t(app, "tsum"), t(app, "collect")
    assert chain(add.s(1, 1), group([], app=app), tsum.s(5)).apply_async().get(timeout=TIMEOUT) == 5
    assert chain(group([], app=app), tsum.s()).apply_async().get(timeout=TIMEOUT) == 0
    assert chord([group([], app=app), add.s(1, 1)], collect.s()).apply_async().get(timeout=TIMEOUT) == [[], 2]


def test_chord_header_failure_fails_the_chord_and_runs_error_callbacks_once(
        app: Taskq, worker: None, journal: str) -> None:
    """Celery #8211: the failing header task's own errback runs, the chord's errback runs once,
    the body never runs, and the chord's result is the failure."""
    add, boom, body, errback = t(app, "add"), t(app, "boom"), t(app, "body"), t(app, "errback")
    failing = boom.s(7).set(link_error=errback.s(label="header"))
    workflow = chord([add.s(1, 1), failing, add.s(2, 2), boom.s(8)], body.s(label="never"))
    workflow.link_error(errback.s(label="chord"))
    result = workflow.apply_async()
    with pytest.raises(CanvasError, match="boom"):
        result.get(timeout=TIMEOUT)
    assert app.AsyncResult(workflow.id).status == FAILURE

    def errbacks() -> list[str]:
        return [line for line in read_journal(journal) if line.startswith("errback")]

    wait_until(lambda: len(errbacks()) >= 2, TIMEOUT, "both error callbacks")
    wait_until(lambda: read_journal(journal).count("boom") == 2, TIMEOUT, "both failing header tasks")
    lines = errbacks()
    assert sorted(line.split()[1] for line in lines) == ["chord", "header"], lines
    assert f"errback header {failing.id} tests.apps.canvasapp.CanvasError: boom [7]" in lines
    assert not any(line.startswith("body") for line in read_journal(journal))


def test_one_failure_in_nested_chains_and_groups_fails_the_chord(app: Taskq, worker: None, journal: str) -> None:
    """Celery #9674: the chord ends (failed) instead of waiting forever."""
    add, boom, body = t(app, "add"), t(app, "boom"), t(app, "body")
    inner = chain(add.s(1, 1), group(add.s(1), chain(add.s(2), boom.s())), add.s(100))
    workflow = chord([inner, add.s(3, 3), chord([add.s(4, 4)], body.s(label="inner"))], body.s(label="outer"))
    result = workflow.apply_async()
    with pytest.raises(CanvasError):
        result.get(timeout=TIMEOUT)
    assert not any(line.startswith("body outer") for line in read_journal(journal))
    assert app.AsyncResult(inner.tasks[-1].id).status == FAILURE


def test_link_and_link_error_callbacks(app: Taskq, worker: None, journal: str) -> None:
    add, boom, errback = t(app, "add"), t(app, "boom"), t(app, "errback")
    ok = add.apply_async((1, 2), link=add.s(10))
    assert ok.get(timeout=TIMEOUT) == 3
    wait_until(lambda: len(ok.children) == 1 and ok.children[0].ready(), TIMEOUT, "the link")
    assert ok.children[0].get() == 13
    bad = boom.apply_async((1,), link_error=[errback.s(label="e1"), errback.si("fixed", "args", label="e2")])
    with pytest.raises(CanvasError):
        bad.get(timeout=TIMEOUT)
    wait_until(lambda: len([x for x in read_journal(journal) if x.startswith("errback")]) == 2, TIMEOUT,
               "two error callbacks")
    lines = [x for x in read_journal(journal) if x.startswith("errback")]
    assert f"errback e1 {bad.id} tests.apps.canvasapp.CanvasError: boom [1]" in lines
    assert "errback e2 fixed args" in lines


def test_a_task_replaced_by_a_workflow_takes_its_result(app: Taskq, worker: None, journal: str) -> None:
    fan, add = t(app, "fan"), t(app, "add")
    replaced = fan.delay(4)
    assert replaced.get(timeout=TIMEOUT) == 12
    assert len(replaced.children) == 1  # the chord, whose header and body hang below it
    assert chain(fan.si(3), add.s(100)).apply_async().get(timeout=TIMEOUT) == 106
    assert read_journal(journal).count("fan 4") == 1


@pytest.mark.parametrize("app", ["local"], indirect=True)
def test_a_follow_up_refused_by_a_send_check_fails_the_chain(app: Taskq, worker: None) -> None:
    """A budget or block check refusing the next step fails the chain's result instead of the worker."""
    add, mul = t(app, "add"), t(app, "mul")

    def refuse(task: object, key: str | None) -> None:
        if key == "blocked":
            raise BudgetExceeded("user blocked: budget spent")

    mul.add_send_check(refuse)
    result = chain(add.s(1, 1), mul.s(2).set(key="blocked"), add.s(3)).apply_async()
    with pytest.raises(BudgetExceeded, match="budget spent"):
        result.get(timeout=TIMEOUT)
    assert chain(add.s(1, 1), mul.s(2)).apply_async().get(timeout=TIMEOUT) == 4  # the worker carries on


def test_a_chain_step_whose_arguments_do_not_fit_fails_the_chain(app: Taskq, worker: None) -> None:
    """``add.s(1, 2)`` after a step gets three arguments: the step fails with Python's TypeError (as
    at the call) and the chain stops; the worker's finisher used to die on it, so nothing was stored after."""
    add = t(app, "add")
    workflow = chain(add.s(1, 1), add.s(1, 2), add.s(3))
    result = workflow.apply_async()
    with pytest.raises(TypeError, match="canvas.add"):
        result.get(timeout=TIMEOUT)
    assert app.AsyncResult(workflow.tasks[1].id).status == FAILURE
    assert chain(add.s(1, 1), add.s(2)).apply_async().get(timeout=TIMEOUT) == 4  # the worker carries on


@pytest.mark.parametrize("app", ["local"], indirect=True)
def test_a_chain_step_with_a_bad_priority_or_serializer_fails_the_chain(app: Taskq, worker: None) -> None:
    """Refused at the call for a task sent directly; a later step's used to end the finisher's thread."""
    add = t(app, "add")
    for option, error in (({"priority": 7}, ConfigError), ({"serializer": "nope"}, SerializationError)):
        workflow = chain(add.s(1, 1), add.s(2).set(**option), add.s(3))
        with pytest.raises(error):
            workflow.apply_async().get(timeout=TIMEOUT)
        assert app.AsyncResult(workflow.tasks[1].id).status == FAILURE
    assert chain(add.s(1, 1), add.s(2)).apply_async().get(timeout=TIMEOUT) == 4  # the worker carries on


def test_a_chord_that_outlasts_the_result_expiry_runs_its_body_on_the_embedded_store(tmp_path: Path) -> None:
    """As on Redis (tests/test_canvas_kafka.py): every report keeps the chord's record alive."""
    app = build_app(local_path=str(tmp_path / "q.db"), result_expires=3, default_partitions=2)
    with worker_thread(app, concurrency=1):
        result = chord([t(app, "nap").s(i, 1.2) for i in range(4)], t(app, "body").s()).apply_async()
        assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3]
    app.close()


def test_revoking_a_chain_step_or_chord_part_midway_stops_what_follows(app: Taskq, worker: None, journal: str) -> None:
    """``revoke()`` stores REVOKED at once, and the worker skipped the follow-up as finished: the rest
    of the chain, and the chord's body, stayed PENDING for ever."""
    add, nap, body = t(app, "add"), t(app, "nap"), t(app, "body")
    workflow = chain(nap.s(1, 1.0), add.s(1), add.s(2))
    result = workflow.apply_async()
    part = chain(nap.s(2, 1.0), add.s(1))  # its second step is sent a second from now: revoked by then
    chorded = chord([nap.s(1, 0.1), part], body.s(label="revoked")).apply_async()
    app.AsyncResult(workflow.tasks[1].id).revoke()
    app.AsyncResult(part.tasks[1].id).revoke()
    for revoked in (result, chorded):
        with pytest.raises(TaskRevoked):
            revoked.get(timeout=TIMEOUT)
    assert app.AsyncResult(workflow.tasks[1].id).status == REVOKED
    assert not any(line.startswith(("add", "body")) for line in read_journal(journal))


def test_a_report_to_a_chord_at_a_place_it_does_not_have_is_dropped(app: Taskq, worker: None) -> None:
    """Any Kafka client can send a task claiming to be part 7 of a chord of 2: it was counted, so the chord
    fired with a part missing and the KeyError ended the finisher's thread."""
    add, nap, tsum = t(app, "add"), t(app, "nap"), t(app, "tsum")
    workflow = chord([add.s(1, 1), nap.s(5, 1.0)], tsum.s())
    result = workflow.apply_async()
    for index in (7, -1):
        message = add.message([1, 2], {}, canvas=JSON.dumps({"chord": {"id": workflow.id, "index": index}}).decode())
        app.producer.produce(add.topic, message.key, *message.encode(app.serializers))
    app.flush()
    assert result.get(timeout=TIMEOUT) == 7
    assert add.delay(2, 2).get(timeout=TIMEOUT) == 4  # the worker carries on


def test_allow_error_chord_runs_its_body_with_the_failures_in_place(app: Taskq, worker: None, journal: str) -> None:
    add, boom, collect, errback = t(app, "add"), t(app, "boom"), t(app, "collect"), t(app, "errback")
    failing = boom.s(3)
    workflow = chord([add.s(1, 1), failing, add.s(2, 2)], collect.s(), allow_error=True)
    workflow.link_error(errback.s(label="chord"))
    assert workflow.apply_async().get(timeout=TIMEOUT) == [
        2, {"error": "tests.apps.canvasapp.CanvasError: boom [3]", "task_id": failing.id}, 4]
    assert app.AsyncResult(failing.id).status == FAILURE
    assert not any(line.startswith("errback chord") for line in read_journal(journal))
