"""Task events, ``taskq inspect`` and ``taskq lag`` on real Kafka and Redis (and the embedded broker).

The main test runs 1,000 tasks over two worker processes with retries, dead letters, a hook that
raises and a ``kill -9`` of one worker, and checks the events topic against the result backend,
``taskq lag`` against Kafka's own ConsumerGroupCommand, and ``taskq inspect workers``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from taskq import Taskq
from taskq.brokers.base import Record
from taskq.delivery import DeliveryGate
from taskq.events import FINAL_TYPES, TASK_DEAD, TASK_FAILED, TASK_FIELDS, TASK_RECEIVED, TASK_RETRIED
from taskq.events import TASK_SKIPPED, TASK_STARTED, TASK_SUCCEEDED, VERSION, EventsHook, decode_all, event_partition
from taskq.execution import Kind, Outcome
from taskq.inspect import read_events, workers
from taskq.message import H_ATTEMPTS, H_CONTENT_TYPE, H_ID, H_PARENT_ID, H_ROOT_ID, H_TASK
from taskq.results.base import FAILURE, STARTED, SUCCESS, ResultRecord
from tests.support import (
    WorkerProcess,
    env_for,
    kafka_describe,
    reliable_client,
    taskq_cli,
    taskq_lag,
    wait_until,
    worker_thread,
)

HOOKED = "tests.apps.hooked"


def assert_lag_matches_kafka(env: dict[str, str], kafka_url: str, group: str) -> dict[tuple[str, int], Any]:
    """``taskq lag`` (read before and after, unchanged) equals the Kafka tool on every partition it shows."""
    before = taskq_lag(env, group)
    kafka = kafka_describe(kafka_url, group)
    after = taskq_lag(env, group)
    # partitions never committed are listed while a member holds them: frozen members may time out
    committed = {tp: row for tp, row in after.items() if row[0] is not None}
    assert committed == {tp: row for tp, row in before.items() if row[0] is not None}, "offsets moved"
    assert committed.keys() == {tp for tp, row in kafka.items() if row[0] is not None}
    for tp, (current, end, lag) in kafka.items():
        if current is None:  # never committed: Kafka prints "-"
            assert tp not in after or (after[tp][0] is None and after[tp][1] == end), (tp, after.get(tp))
        else:
            assert after[tp] == (current, end, lag), (tp, after[tp], kafka[tp])
    return committed


def inspect_workers(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in json.loads(taskq_cli(env, "inspect", "workers", "--json"))}


def all_events(app: Taskq) -> list[dict[str, Any]]:
    """Every event of the topic, in topic order within each partition."""
    return read_events(app, 0.0, sort=False)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
def test_events_lag_and_inspect_over_two_workers_with_retries_dead_letters_a_broken_hook_and_kill(
        kafka_url: str, redis_clean: str, unique: str) -> None:
    env = {**env_for(kafka_url, redis_clean, f"ev{unique}"), "HOOKED_RAISE": "1"}
    group = env["TASKQ_GROUP"]
    app, tasks = reliable_client(env)
    procs = [WorkerProcess(HOOKED, env, "-c", "4", name=f"w{i}") for i in range(2)]
    try:
        for w in procs:
            w.wait_for("assigned")
        expected: dict[str, tuple[str, Any]] = {}
        retried: set[str] = set()
        for i in range(30):  # fail once, then succeed on the retry
            r = tasks["flaky"].delay(f"f{i}", 1)
            expected[r.id] = (SUCCESS, None)  # the run number: 2, or more after a redelivery
            retried.add(r.id)
        for i in range(10):  # fail every run: dead-lettered after 3 retries
            expected[tasks["flaky"].delay(f"d{i}", 99).id] = (FAILURE, None)
        for i in range(960):
            expected[tasks["echo"].delay(f"k{i % 40}", i, 0.1).id] = (SUCCESS, i)
        app.flush()
        ids = list(expected)

        def finished() -> int:
            return sum(r is not None and r.ready for r in app.backend.get_many(ids))

        # mid-run: freeze both workers, compare taskq lag with Kafka's tool, let them go on
        wait_until(lambda: finished() >= 50, 120, "50 results")
        for w in procs:
            os.kill(w.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # commits in flight land
            mid = assert_lag_matches_kafka(env, kafka_url, group)
            assert sum(lag for _, _, lag in mid.values()) > 0, "nothing left to do mid-run"
        finally:
            for w in procs:
                os.kill(w.proc.pid, signal.SIGCONT)

        # both workers heartbeat with live counts
        def both_online() -> bool:
            view = inspect_workers(env)
            return all(view.get(w.name, {}).get("status") == "online" and view[w.name]["processed"] > 0
                       for w in procs)
        wait_until(both_online, 30, "both workers online with processed counts", interval=0.2)

        # kill -9 one worker while work remains: shown lost (silent, not stopped) within 10 s
        victim, survivor = procs[1], procs[0]
        assert finished() < len(ids), "the run ended before the kill"
        victim.kill()
        killed_at = time.monotonic()
        seen_offline_at = None
        while time.monotonic() - killed_at < 10:
            started = time.monotonic()
            view = inspect_workers(env)
            if view.get(victim.name, {}).get("status") == "lost":
                seen_offline_at = started - killed_at
                break
        assert seen_offline_at is not None and seen_offline_at < 10, "killed worker not shown lost in 10 s"
        assert view[survivor.name]["status"] == "online"

        # every task finishes as expected despite the hook that raises
        try:
            wait_until(lambda: finished() == len(ids), 180, "every task final")
        except AssertionError:
            left = [i for i, r in zip(ids, app.backend.get_many(ids)) if r is None or not r.ready]
            raise AssertionError(f"{len(left)} tasks not final, e.g. {left[:3]}; lag "
                                 f"{[(tp, r) for tp, r in taskq_lag(env, group).items() if r[2]]}\n"
                                 f"{survivor.log[-6000:]}") from None
        records = dict(zip(ids, app.backend.get_many(ids)))
        for task_id, (status, value) in expected.items():
            record = records[task_id]
            assert record is not None and record.status == status, (task_id, record)
            if status == SUCCESS and value is not None:
                assert record.result == value, (task_id, record)
            elif status == SUCCESS:
                assert record.result >= 2 and record.attempts >= 2, (task_id, record)
        for kind in ("received", "started", "finished"):
            assert survivor.log.count(f"hook Broken.{kind} raised RuntimeError") == 1, survivor.log[-3000:]

        # after the drain: lag 0 everywhere, and equal to Kafka's tool
        rows: dict[tuple[str, int], Any] = {}

        def drained() -> bool:
            rows.update(taskq_lag(env, group))
            return all(lag == 0 for _, _, lag in rows.values())
        try:
            wait_until(drained, 60, "lag 0 after the drain", interval=0.5)
        except AssertionError:
            raise AssertionError(f"lag left: {[(tp, r) for tp, r in rows.items() if r[2]]}\n"
                                 f"{survivor.log[-4000:]}") from None
        drained = assert_lag_matches_kafka(env, kafka_url, group)
        assert all(lag == 0 for _, _, lag in drained.values())

        assert survivor.terminate() == 0
        check_events(all_events(app), expected, records, retried)
    finally:
        for w in procs:
            w.stop()
        app.close()


@pytest.mark.kafka
@pytest.mark.redis
def test_a_worker_killed_right_after_committing_loses_no_event(kafka_url: str, redis_clean: str, unique: str) -> None:
    """Offsets are committed only once their task events are acknowledged: with the worker's producer
    lingering 1.5 s before sending, a kill -9 as soon as every offset is committed loses no final event
    (without the wait the commits land ~1.3 s before the events leave the process)."""
    env = {**env_for(kafka_url, redis_clean, f"evk{unique}"), "TASKQ_PRODUCER_OPTIONS": "linger.ms=1500"}
    group = env["TASKQ_GROUP"]
    app, tasks = reliable_client(env)
    worker = WorkerProcess("tests.apps.reliable", env, "-c", "4", name="wk")
    try:
        worker.wait_for("assigned")
        echo = tasks["echo"]
        ids = [echo.delay(f"k{i % 20}", i).id for i in range(300)]
        app.flush()
        wait_until(lambda: sum(app.broker.committed(group, echo.topic).values()) >= len(ids), 60,
                   "every offset committed", interval=0.01)
        worker.kill()
        records = app.backend.get_many(ids)
        assert all(r is not None and r.status == SUCCESS for r in records)
        wanted = set(ids)
        finals = {e["id"]: e for e in all_events(app) if e.get("id") in wanted and e["type"] in FINAL_TYPES}
        missing = [i for i in ids if i not in finals]
        assert not missing, f"{len(missing)} of {len(ids)} tasks have no final event"
        assert {e["type"] for e in finals.values()} == {TASK_SUCCEEDED}
    finally:
        worker.stop()
        app.close()


def test_delivery_gate_releases_holds_in_round_order_and_bounds_the_wait() -> None:
    """A hold waits for its round and every earlier one; past the bound it is released anyway, once
    logged, and later holds wait no more until a message is acknowledged again."""
    errors: list[tuple[int, Exception]] = []
    gate = DeliveryGate(5.0, lambda n, exc: errors.append((n, exc)))
    released: list[str] = []
    gate.open()
    first = gate.count(3)
    gate.hold("a", released.append, 0.0)
    gate.close()
    gate.open()
    second = gate.count(1)
    gate.hold("b", released.append, 0.0)
    gate.close()
    gate.open()
    gate.hold("c", released.append, 0.0)  # nothing sent in this round: waits for the earlier ones
    gate.close()
    second(None, None)
    assert released == [] and gate.waiting
    first(RuntimeError("gone"), None)  # a failed delivery counts as done (and is reported)
    assert released == ["a", "b", "c"] and not gate.waiting and errors[0][0] == 3
    gate.open()
    lost = gate.count(1)
    gate.hold("d", released.append, 10.0)
    gate.close()
    gate.expire(14.9)
    assert released[-1] == "c"
    gate.expire(15.0)  # the bound: released without its acknowledgement
    assert released[-1] == "d"
    gate.open()
    gate.hold("e", released.append, 20.0)  # late: not held at all
    assert released[-1] == "e"
    gate.close()
    lost(None, None)  # an acknowledgement again: holds wait again
    gate.open()
    gate.count(1)
    gate.hold("f", released.append, 30.0)
    gate.close()
    assert released[-1] == "e" and gate.waiting
    gate.release_all()
    assert released[-1] == "f"


def test_holds_are_released_once_published_and_at_once_after_the_events_thread_ended(tmp_path: Path) -> None:
    app = Taskq("evhold", local_path=str(tmp_path / "q.db"))
    app.ensure_topic(app.events_topic, 1)
    hook = EventsHook(app, app.broker.producer(), "w1")
    released: list[list[str]] = []
    hook.hold(["a"], released.append)  # nothing queued before it: released after the next round
    wait_until(lambda: released == [["a"]], 5, "the hold released")
    hook.close(5)
    hook.hold(["b"], released.append)  # nothing publishes any more: released at once
    assert released == [["a"], ["b"]]
    app.close()


def check_events(events: list[dict[str, Any]], expected: dict[str, tuple[str, Any]], records: dict[str, Any],
                 retried: set[str]) -> None:
    """Every task has its events, in order per run, and its final event agrees with the backend."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("id") in expected:
            by_task[e["id"]].append(e)
            assert e["v"] == VERSION and e["root_id"] == e["id"] and e["parent_id"] is None
            assert "args" not in e and "result" not in e
    missing = set(expected) - set(by_task)
    assert not missing, f"{len(missing)} tasks without events"
    skipped = 0
    for task_id, evs in by_task.items():
        finals = [e for e in evs if e["type"] in FINAL_TYPES]
        assert finals, (task_id, [e["type"] for e in evs])
        final = finals[-1]
        record = records[task_id]
        if final["type"] == TASK_SKIPPED:  # a redelivery after the kill: the stored state travels with it
            skipped += 1
            assert final["state"] == record.status, (task_id, final)
            continue
        if record.status == SUCCESS:
            assert final["type"] == TASK_SUCCEEDED, (task_id, [e["type"] for e in evs])
            assert final["exc_type"] is None
        else:
            assert final["type"] == TASK_DEAD and finals[-2]["type"] == TASK_FAILED, [e["type"] for e in evs]
            assert final["exc_type"] == "ValueError" and record.error.startswith("ValueError")
        assert (final["worker"], final["attempt"]) == (record.worker, record.attempts), (final, record)
        assert final["finished"] == pytest.approx(record.date_done)
        # the final run's own events, in topic order: received, started (each unless coalesced into a
        # later event of the run, which then carries its time), then the outcome
        run = [e for e in evs if (e["worker"], e["topic"], e["partition"], e["offset"], e["received"]) ==
               (final["worker"], final["topic"], final["partition"], final["offset"], final["received"])]
        types = [e["type"] for e in run]
        order = [TASK_RECEIVED, TASK_STARTED, final["type"]] if final["type"] != TASK_DEAD else [
            TASK_RECEIVED, TASK_STARTED, TASK_FAILED, TASK_DEAD]
        assert types == [t for t in order if t in types], (task_id, types)
        assert None not in (final["received"], final["started"]), final
        assert final["received"] <= final["started"] <= final["finished"], final
        for e in run[:-1]:
            assert e["ts"] <= final["ts"], (e, final)
        assert final["runtime"] is not None and final["runtime"] >= 0
        if task_id in retried:
            retries = [e for e in evs if e["type"] == TASK_RETRIED]
            assert retries and retries[0]["retry_in"] > 0 and retries[0]["exc_type"] == "ValueError"
            assert evs.index(retries[0]) < evs.index(final)
    print(f"\nEVENTS {len(events)} events for {len(by_task)} tasks; {skipped} final as skipped redeliveries")


def test_events_and_inspect_on_the_embedded_broker_and_track_started(tmp_path: Path) -> None:
    """The local broker carries the events topic; track_started stores STARTED while a task runs;
    with events_coalesce=0 every state change is its own event."""
    app = Taskq("evlocal", local_path=str(tmp_path / "q.db"), track_started=True, events_coalesce=0)
    gate = threading.Event()

    @app.task(name="ev.wait")
    def wait(seconds: float) -> str:
        gate.wait(seconds)
        return "done"

    env = {"TASKQ_LOCAL_PATH": str(tmp_path / "q.db"), "TASKQ_BROKER_URL": "", "TASKQ_RESULT_BACKEND": ""}
    with worker_thread(app, concurrency=2) as (worker, _thread):
        result = wait.delay(30)
        wait_until(lambda: result.status == STARTED, 30, "STARTED stored")
        tail = json.loads(taskq_cli(env, "events", "--json", "--since", "60", "--state", "started", "--count", "1",
                                    "--timeout", "30"))
        assert (tail["type"], tail["id"], tail["task"]) == (TASK_STARTED, result.id, "ev.wait")
        running = json.loads(taskq_cli(env, "inspect", "active", "--json"))
        assert [t["id"] for t in running] == [result.id]
        wait_until(lambda: worker.name in {v.name for v in workers(read_events(app, time.time() - 60))}, 10,
                   "a heartbeat on the local broker")
        gate.set()
        assert result.get(timeout=30) == "done"
    events = [e for e in read_events(app, 0.0, sort=False) if e.get("id") == result.id]
    assert [e["type"] for e in events] == [TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED]
    views = {v.name: v for v in workers(read_events(app, 0.0))}
    assert views[worker.name].status == "offline" and views[worker.name].processed == 1
    app.close()


def test_events_include_args_only_when_asked(tmp_path: Path) -> None:
    for include in (False, True):
        app = Taskq("evargs", local_path=str(tmp_path / f"{include}.db"), events_include_args=include,
                    events_coalesce=0 if include else 0.2)

        @app.task(name="ev.add", key="user")
        def add(a: int, b: int, user: str = "u1") -> int:
            return a + b

        with worker_thread(app, concurrency=1):
            result = add.delay(2, 3, user="u7")
            assert result.get(timeout=30) == 5
        events = {e["type"]: e for e in read_events(app, 0.0) if e.get("id") == result.id}
        done = events[TASK_SUCCEEDED]
        assert done["key"] == "u7" and done["attempt"] == 1 and done["root_id"] == result.id
        if include:
            assert (done["args"], done["kwargs"], done["result"]) == ([2, 3], {"user": "u7"}, 5)
            assert events[TASK_RECEIVED]["args"] == [2, 3] and "result" not in events[TASK_RECEIVED]
        else:  # coalesced or not, the final event carries every time
            assert not {"args", "kwargs", "result"} & set(done)
            assert done["sent"] <= done["received"] <= done["started"] <= done["finished"]
        app.close()


def test_a_batch_of_task_events_is_one_message_per_partition_in_order(tmp_path: Path) -> None:
    """Schema v3: 60 tasks finished in a few rounds give batches of rows, each on the partition its roots
    map to; every consumer path (decode_all, read_events) sees each event once, a task's events in order."""
    app = Taskq("evbatch", local_path=str(tmp_path / "q.db"), events_coalesce=0, default_partitions=3)

    @app.task(name="ev.noop")
    def noop(i: int) -> int:
        return i

    with worker_thread(app, concurrency=2):
        results = [noop.delay(i) for i in range(60)]
        assert [r.get(timeout=30) for r in results] == list(range(60))
    topic = app.events_topic
    marks = app.broker.watermarks(topic)
    reader = app.broker.reader(topic, {p: 0 for p in marks})
    records: list[Any] = []
    try:
        wait_until(lambda: records.extend(reader.read(5000, 0.2)) or len(records) >= sum(h for _l, h in marks.values()),
                   10, "the events topic read")
    finally:
        reader.close()
    batches = [json.loads(r.value) for r in records if b'"rows"' in (r.value or b"")]
    assert any(len(b["rows"]) > 1 for b in batches), "no round was sent as one batch"
    assert all(b["fields"] == list(TASK_FIELDS) and b["worker"] for b in batches)
    seen: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for event in decode_all(record.value):
            assert event["v"] == VERSION
            if event["type"] in (TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED):
                assert record.partition == event_partition(event["root_id"].encode(), len(marks)), event
                seen[event["id"]].append(event["type"])
    assert {r.id: seen[r.id] for r in results} == {r.id: [TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED]
                                                    for r in results}
    by_task = defaultdict(list)
    for event in read_events(app, 0.0, sort=False):
        by_task[event.get("id")].append(event["type"])
    assert all(by_task[r.id] == seen[r.id] for r in results)
    app.close()


def test_decode_all_reads_v1_objects_v2_arrays_v3_batches_and_leaves_out_junk() -> None:
    one = {"v": 1, "type": TASK_SUCCEEDED, "id": "a"}
    two = {"v": 2, "type": TASK_STARTED, "id": "b"}
    assert decode_all(json.dumps(one).encode()) == [one]
    assert decode_all(json.dumps([two, {"v": 99, "type": "x"}, 3, one]).encode()) == [two, one]
    assert decode_all(b"not json") == [] and decode_all(None) == [] and decode_all(b"") == []
    batch = {"v": 3, "worker": "w1", "fields": ["type", "id", "later_field"],
             "rows": [[TASK_RETRIED, "c", 1, {"retry_in": 2.5}], ["too short"], [TASK_SUCCEEDED, "d", None]]}
    assert decode_all(json.dumps(batch).encode()) == [
        {"v": 3, "worker": "w1", "type": TASK_RETRIED, "id": "c", "later_field": 1, "retry_in": 2.5},
        {"v": 3, "worker": "w1", "type": TASK_SUCCEEDED, "id": "d", "later_field": None}]
    assert decode_all(json.dumps({**batch, "v": 99}).encode()) == []
    assert decode_all(json.dumps({**batch, "fields": "type"}).encode()) == []


def test_a_success_event_is_the_same_on_the_fast_path_and_the_general_one(tmp_path: Path) -> None:
    """The events thread builds a plain success from its result record; every other outcome from the
    record's headers. Both give the same event for the same success (a retried task of a workflow)."""
    app = Taskq("evfast", local_path=str(tmp_path / "q.db"), default_partitions=3)
    sent = []

    class Producer:
        def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any = None,
                    partition: int | None = None) -> None:
            sent.append((partition, value))

        def send(self, topic: str, key: bytes | None, value: bytes) -> None:
            pass

        def poll(self, timeout: float = 0) -> int:
            return 0

        def flush(self, timeout: float = 0) -> int:
            return 0

    app.broker.ensure_topics({app.events_topic: 3})
    hook = EventsHook(app, Producer(), "w1")  # type: ignore[arg-type]
    hook.close(5)
    headers = [(H_ID, b"t2"), (H_TASK, b"ev.add"), (H_CONTENT_TYPE, b"application/json"), (H_ROOT_ID, b"r1"),
               (H_PARENT_ID, b"t1"), (H_ATTEMPTS, b"2")]
    now = time.time()
    record = Record("q.ev.add", 1, 41, b"user-7", b"[[1, 2], {}]", headers, int((now - 1) * 1000))
    result = ResultRecord("t2", SUCCESS, 3, task="ev.add", worker="w1", attempts=3, date_done=now + 1,
                          root_id="r1", parent_id="t1")
    outcome = Outcome(record, Kind.SUCCESS, result, runtime=0.25)
    events = []
    for coalesce in (1.0, 0.0):  # 0: the general path
        hook.coalesce = coalesce
        hook.received([record], now - 0.5)
        hook.started(record)
        hook.finished([outcome])
        hook._drain()
        partition, value = sent.pop()
        [event] = [e for e in decode_all(value) if e["type"] == TASK_SUCCEEDED]
        # taken when started() and finished() ran
        assert event["received"] <= event.pop("started") <= event.pop("ts") <= event["finished"]
        events.append((partition, event))
    assert events[0] == events[1]
    partition, event = events[0]
    assert partition == event_partition(b"r1", 3)
    assert {k: event[k] for k in ("id", "root_id", "parent_id", "task", "key", "attempt", "sent", "received",
                                  "finished", "runtime", "worker")} == {
        "id": "t2", "root_id": "r1", "parent_id": "t1", "task": "ev.add", "key": "user-7", "attempt": 3,
        "sent": int((now - 1) * 1000) / 1000, "received": now - 0.5, "finished": now + 1, "runtime": 0.25,
        "worker": "w1"}
    app.close()


def test_an_event_too_large_with_its_arguments_is_sent_without_them(tmp_path: Path) -> None:
    """With ``events_include_args`` a task of 600 KB arguments (1.2 MB with its result) still gets every event."""
    app = Taskq("evbig", local_path=str(tmp_path / "q.db"), events_include_args=True, events_coalesce=0)

    @app.task(name="ev.echo", key="user")
    def echo(text: str, user: str = "u1") -> str:
        return text

    try:
        with worker_thread(app, concurrency=1):
            big, small = echo.delay("x" * 600_000, user="u1"), echo.delay("y", user="u1")
            assert big.get(timeout=30) == "x" * 600_000 and small.get(timeout=30) == "y"
        events = {(e["id"], e["type"]): e for e in read_events(app, 0.0) if "id" in e}
        done = events[(big.id, TASK_SUCCEEDED)]
        assert done["key"] == "u1" and not {"args", "kwargs", "result"} & set(done)
        assert (big.id, TASK_RECEIVED) in events
        assert events[(small.id, TASK_SUCCEEDED)]["args"] == ["y"]  # small ones keep them
    finally:
        app.close()


def test_inspect_shows_escape_sequences_and_markup_in_events_as_text(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can write the events topic: a worker name that clears the screen or a pool in rich markup is
    printed by ``taskq inspect workers`` as visible text."""
    from click.testing import CliRunner

    from taskq.cli import main
    from tests.monitor_support import produce_events

    monkeypatch.setenv("TASKQ_LOCAL_PATH", str(tmp_path / "q.db"))
    monkeypatch.delenv("TASKQ_BROKER_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "300")
    app = Taskq("evterm")
    try:
        produce_events(app, [{"v": 1, "type": "worker-heartbeat", "ts": time.time(), "worker": "w\x1b[2J\x1b]0;t\x07",
                              "pool": "[bold]threads[/bold]", "concurrency": 1, "partitions": [], "freq": 2.0}])
    finally:
        app.close()
    out = CliRunner().invoke(main, ["inspect", "workers"], catch_exceptions=False).output
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "w\\x1b[2J\\x1b]0;t\\x07" in out and "[bold]threads[/bold]" in out, out


@pytest.mark.kafka
@pytest.mark.redis
def test_the_events_topic_deleted_while_a_worker_runs_is_created_again(kafka_url: str, redis_url: str,
                                                                       unique: str) -> None:
    """Like a dead-letter topic, the events topic deleted under a running worker comes back with its next
    events: the worker's tasks and heartbeats are seen again (the monitor, Flower) instead of never."""
    from confluent_kafka.admin import AdminClient

    app = Taskq("evdel", broker=kafka_url, backend=redis_url, topic_prefix=f"evd{unique}.", group=f"evd{unique}")

    @app.task(name="ev.add")
    def add(x: int) -> int:
        return x + 1

    with worker_thread(app, concurrency=2) as (worker, _thread):
        assert add.delay(1).get(timeout=30) == 2
        admin = AdminClient({"bootstrap.servers": kafka_url.removeprefix("kafka://")})
        for future in admin.delete_topics([app.events_topic]).values():
            future.result(30)
        deleted = time.time()
        sent: set[str] = set()

        def seen_again() -> bool:
            result = add.delay(2)
            sent.add(result.id)
            assert result.get(timeout=30) == 3
            return any(e.get("id") in sent for e in read_events(app, deleted))
        wait_until(seen_again, 90, "a task's event on the events topic after its deletion", interval=1.0)
        wait_until(lambda: worker.name in {v.name for v in workers(read_events(app, time.time() - 10))}, 30,
                   "the worker's heartbeats again")
    app.close()


def test_inspect_and_the_monitor_agree_when_a_worker_is_lost() -> None:
    """A killed worker was "offline" after 8 s for taskq inspect but "lost" after 6 s on the monitor's page; a
    worker that stopped cleanly is offline for both."""
    from taskq.inspect import workers
    from taskq.monitor.state import WorkerView

    beat = {"type": "worker-heartbeat", "worker": "w", "ts": 100.0, "freq": 2.0}
    for now, expected in ((105.9, "online"), (106.1, "lost")):
        assert workers([beat], now=now)[0].status == expected
        assert WorkerView("w", last_heartbeat=100.0, freq=2.0).alive(now) == (expected == "online")
    assert workers([beat, {**beat, "type": "worker-offline", "ts": 101.0}], now=101.5)[0].status == "offline"
