"""``taskq flower``: the real Flower (PyPI ``flower``) finds taskq's workers and tasks.

Flower runs as ``celery --broker=redis://... flower`` (``flower_server`` fixture); the bridge reads the
taskq events topic and speaks Celery events and the pidbox protocol over that Redis.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from taskq.monitor.flower import FlowerBridge, to_celery
from tests.monitor_support import task_event
from tests.support import local_app_module, wait_until, worker_thread

APP = "tests.apps.monitorapp"
WORKER = "flower-w"
NODE = f"taskq@{WORKER}"


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read().decode()
    return json.loads(body) if body[:1] in "{[" else body


@pytest.fixture
def mod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = local_app_module(APP, str(tmp_path / "q.db"), monkeypatch, MONITOR_MARKER=str(tmp_path / "ready"))
    yield module
    module.app.close()


def test_celery_event_fields() -> None:
    kind, host, _pid, fields = to_celery(task_event("task-failed", "x", 5.0, worker="h:1", exc_type="ValueError",
                                                    exc_message="bad"))  # type: ignore[misc]
    assert (kind, host, fields["exception"], fields["uuid"]) == ("task-failed", "taskq@h:1", "ValueError('bad')", "x")
    kind, host, pid, fields = to_celery({"type": "worker-heartbeat", "ts": 7.0, "worker": "h:1", "pid": 9,
                                         "freq": 2.0, "active": 1, "processed": 5})  # type: ignore[misc]
    assert (kind, host, pid, fields["freq"], fields["timestamp"], fields["sw_ident"]) == \
        ("worker-heartbeat", "taskq@h:1", 9, 2.0, 7.0, "taskq")
    assert to_celery(task_event("task-dead", "x", 5.0)) is None  # task-failed already told Flower


def test_arguments_left_out_of_events_are_shown_as_left_out() -> None:
    """With events_include_args off (the default) Flower showed args () and result '', as if the task took
    no arguments and returned an empty string."""
    from taskq.monitor.flower import NOT_SENT

    _kind, _host, _pid, fields = to_celery(task_event("task-succeeded", "x", 5.0))  # type: ignore[misc]
    assert (fields["args"], fields["kwargs"], fields["result"]) == (NOT_SENT, NOT_SENT, NOT_SENT)
    _kind, _host, _pid, fields = to_celery(task_event("task-succeeded", "x", 5.0, args=[1, "a"], kwargs={},
                                                      result=None))  # type: ignore[misc]
    assert (fields["args"], fields["kwargs"], fields["result"]) == ("(1, 'a')", "{}", "None")


def test_inspect_replies_split_reserved_active_and_revoked(mod: ModuleType) -> None:
    bridge = FlowerBridge(mod.app, "redis://127.0.0.1:1/0")  # not started: only its bookkeeping is used
    for event in [task_event("task-received", "a", 1.0), task_event("task-received", "b", 1.1),
                  task_event("task-started", "a", 1.2), task_event("task-received", "c", 1.3),
                  task_event("task-revoked", "c", 1.4), task_event("task-succeeded", "x", 1.5)]:
        bridge._track(event)
    node = "taskq@host:1"
    assert [t["id"] for t in bridge.active(node)] == ["a"]
    assert [t["id"] for t in bridge.reserved(node)] == ["b"]
    assert bridge.revoked(node) == ["c"]
    bridge._track(task_event("task-succeeded", "a", 1.6))
    bridge._track(task_event("task-started", "b", 1.7))
    assert [t["id"] for t in bridge.active(node)] == ["b"] and bridge.reserved(node) == []
    handlers = bridge.node_handlers(node)
    assert [t["id"] for t in handlers["active"](None)] == ["b"] and handlers["revoked"](None) == ["c"]


def test_real_flower_shows_taskq_workers_and_tasks(mod: ModuleType, flower_server: Any) -> None:
    app = mod.app
    client = redis.Redis.from_url(flower_server.broker_url)
    # Celery events are fire-and-forget (Redis pub/sub): start once Flower listens on celeryev
    wait_until(lambda: client.execute_command("PUBSUB", "NUMPAT") > 0 or
               any(b"celeryev" in c for c in client.pubsub_channels()), 30, "Flower to subscribe to celeryev")
    wire = client.pubsub()
    wire.psubscribe("*celeryev*")  # what Flower receives, as it travels
    bridge = FlowerBridge(app, flower_server.broker_url).start()
    try:
        with worker_thread(app, concurrency=2, name=WORKER):
            ids = [mod.work.delay(i, user="ann").id for i in range(3)]

            def tasks_done() -> bool:
                tasks = get(f"{flower_server.url}/api/tasks")
                return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)
            wait_until(tasks_done, 60, "Flower's /api/tasks to list the tasks as SUCCESS", interval=0.5)
            tasks = get(f"{flower_server.url}/api/tasks")
            assert {tasks[i]["worker"] for i in ids} == {NODE}
            assert {tasks[i]["name"] for i in ids} == {f"{APP}.work"}

            def worker_listed() -> bool:
                workers = get(f"{flower_server.url}/api/workers?refresh=1")
                return NODE in workers and {"stats", "registered", "active_queues", "conf"} <= set(workers[NODE])
            wait_until(worker_listed, 60, "Flower's /api/workers to list the taskq worker", interval=0.5)
            info = get(f"{flower_server.url}/api/workers")[NODE]
            assert info["stats"]["total"][f"{APP}.work"] >= 3
            assert info["stats"]["broker"]["transport"] == "local"
            assert f"{APP}.work" in info["registered"]
            assert info["active_queues"] and info["conf"]["task_serializer"] == "json"
            assert get(f"{flower_server.url}/api/workers?status=1")[NODE] is True
            on_wire = celery_events(wire)
            assert {"worker-heartbeat", "task-succeeded"} <= {e["type"] for e in on_wire}, on_wire
            for e in on_wire:
                assert {"hostname", "timestamp", "utcoffset", "pid", "clock"} <= set(e), e
            assert all(e["freq"] > 0 for e in on_wire if e["type"] == "worker-heartbeat")
            page = get(f"{flower_server.url}/worker/{NODE}")
            assert NODE in page and f"{APP}.work" in page and "taskq:threads" in page.lower()
            print(f"\nFLOWER: bridge published {bridge.published} Celery events; Flower lists "
                  f"{len(tasks)} task(s), worker {NODE}")
    finally:
        bridge.stop()
        wire.close()


def celery_events(wire: Any) -> list[dict[str, Any]]:
    """Celery events seen on the Redis channel: kombu envelopes with a base64 JSON body."""
    import base64

    events = []
    while (message := wire.get_message(timeout=0.5)) is not None:
        if message["type"] != "pmessage":
            continue
        envelope = json.loads(message["data"])
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        events.append(json.loads(body))
    return events


def post(url: str) -> Any:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read().decode())


def test_flower_revoke_revokes_the_taskq_task(mod: ModuleType, flower_server: Any) -> None:
    """Flower's revoke (a broadcast it sends without waiting for a reply) really revokes the task."""
    app = mod.app
    bridge = FlowerBridge(app, flower_server.broker_url).start()
    try:
        with worker_thread(app, concurrency=1, name=WORKER):
            wait_until(lambda: get(f"{flower_server.url}/api/workers?refresh=1").get(NODE) is not None, 60,
                       "Flower to list the taskq worker", interval=0.5)
            busy = mod.work.delay(1, user="ann", sleep=5.0)
            waiting = mod.work.delay(2, user="ann")  # same key: waits until ``busy`` is done
            assert post(f"{flower_server.url}/api/task/revoke/{waiting.id}") == {"message": f"Revoked '{waiting.id}'"}
            assert busy.get(timeout=30) == 2
            wait_until(lambda: waiting.status == "REVOKED", 10, "the task revoked through Flower to be REVOKED")
            wait_until(lambda: get(f"{flower_server.url}/api/tasks").get(waiting.id, {}).get("state") == "REVOKED",
                       30, "Flower to show the task REVOKED", interval=0.5)
    finally:
        bridge.stop()


def test_task_skipped_as_revoked_is_revoked_in_flower(mod: ModuleType) -> None:
    """A task revoked before a worker took it is skipped by its stored REVOKED state: Flower hears task-revoked."""
    kind, _host, _pid, fields = to_celery(task_event("task-skipped", "x", 5.0, state="REVOKED"))  # type: ignore[misc]
    assert (kind, fields["uuid"], fields["terminated"]) == ("task-revoked", "x", False)
    assert to_celery(task_event("task-skipped", "x", 5.0, state="SUCCESS")) is None  # a redelivered duplicate
    bridge = FlowerBridge(mod.app, "redis://127.0.0.1:1/0")
    bridge._track(task_event("task-skipped", "x", 5.0, state="REVOKED"))
    assert bridge.revoked("taskq@host:1") == ["x"]


def test_flower_shows_the_traceback_of_a_failed_task(mod: ModuleType, flower_server: Any) -> None:
    """Events carry no traceback: the bridge gives Flower the one stored with the failure."""
    bridge = FlowerBridge(mod.app, flower_server.broker_url).start()
    try:
        with worker_thread(mod.app, concurrency=1, name=WORKER):
            failed = mod.fragile.delay(7, user="tb")
            with pytest.raises(ValueError):
                failed.get(timeout=30)
            wait_until(lambda: get(f"{flower_server.url}/api/tasks").get(failed.id, {}).get("state") == "FAILURE",
                       30, "Flower to show the task FAILURE", interval=0.5)
            task = get(f"{flower_server.url}/api/task/info/{failed.id}")
            assert task["traceback"] == failed.traceback and "marker missing for 7" in task["traceback"], task
    finally:
        bridge.stop()


def test_flower_counts_and_times_coalesced_tasks(mod: ModuleType, flower_server: Any) -> None:
    """A quick task's received and started events are coalesced into its outcome (events_coalesce): Flower
    still gets received, started and succeeded for it, as from a Celery worker (its Processed column counts
    task-received), and a task running longer than the coalescing delay is listed with its name."""
    name = "flower-count"
    bridge = FlowerBridge(mod.app, flower_server.broker_url).start()
    try:
        with worker_thread(mod.app, concurrency=2, name=name):
            quick = [mod.work.delay(i, user=f"q{i}") for i in range(5)]
            slow = mod.work.delay(9, user="slow", sleep=4.0)
            assert [r.get(timeout=30) for r in quick] == [0, 2, 4, 6, 8]
            wait_until(lambda: get(f"{flower_server.url}/api/tasks").get(slow.id, {}).get("state") == "STARTED", 30,
                       "Flower to show the slow task running", interval=0.2)
            assert get(f"{flower_server.url}/api/tasks")[slow.id]["name"] == f"{APP}.work"
            assert slow.get(timeout=30) == 18
            ids = [r.id for r in quick] + [slow.id]
            wait_until(lambda: all(get(f"{flower_server.url}/api/tasks").get(i, {}).get("state") == "SUCCESS"
                                   for i in ids), 30, "Flower to show the tasks SUCCESS", interval=0.5)
            tasks = get(f"{flower_server.url}/api/tasks")
            for i in ids:
                assert tasks[i]["received"] and tasks[i]["received"] <= tasks[i]["started"] <= tasks[i]["succeeded"]
            counts = {w["hostname"]: w for w in get(f"{flower_server.url}/workers?json=1")["data"]}[f"taskq@{name}"]
            assert (counts["task-received"], counts["task-started"], counts["task-succeeded"]) == (6, 6, 6), counts
    finally:
        bridge.stop()


def test_control_commands_taskq_cannot_do_fail_with_a_reason(mod: ModuleType) -> None:
    """Flower's pool grow, autoscale, shutdown, ... are not taskq operations: the reply says so (Flower shows
    it as the failure's reason) instead of a KeyError from kombu."""
    bridge = FlowerBridge(mod.app, "redis://127.0.0.1:1/0")
    handlers = bridge.node_handlers("taskq@host:1")
    reply = handlers["pool_grow"](None, n=2)
    assert "taskq" in reply["error"] and "pool_grow" in reply["error"] and "concurrency" in reply["error"]
    assert "shutdown" in handlers["shutdown"](None)["error"]
    assert handlers["ping"](None) == {"ok": "pong"}


def test_a_huge_traceback_reaches_flower_cut_to_its_ends(mod: ModuleType) -> None:
    """Flower keeps every task's traceback in memory: one of megabytes goes as its beginning and end."""
    from taskq.results.base import FAILURE, ResultRecord

    tb = "Traceback (most recent call last):\n" + "  frame\n" * 500_000 + "ValueError: the end"
    mod.app.backend.store_many([ResultRecord("big", FAILURE, None, "ValueError: the end", tb, date_done=1.0)])
    sent = FlowerBridge(mod.app, "redis://127.0.0.1:1/0")._traceback("big")
    assert len(sent) < 70_000 and sent.startswith("Traceback (most recent") and sent.endswith("ValueError: the end")
    assert "characters left out" in sent


def test_a_restarted_bridge_resumes_without_counting_twice(mod: ModuleType, flower_server: Any) -> None:
    """Flower counts every event it is sent: a restarted bridge resumes where the last one stopped (its
    position is kept in Flower's Redis) instead of replaying the last hour, so nothing is counted twice and
    what came while it was down is sent."""
    from tests.monitor_support import lifecycle, produce_events

    worker, node = "restart-w:1", "taskq@restart-w:1"

    def run(task_id: str) -> list[dict[str, Any]]:
        beat = {"v": 3, "type": "worker-heartbeat", "ts": time.time(), "worker": worker, "pid": 1, "freq": 2.0}
        return [beat] + [dict(e, worker=worker) for e in lifecycle(task_id, time.time())[1:]]

    def succeeded() -> int | None:
        rows = {w["hostname"]: w for w in get(f"{flower_server.url}/workers?json=1")["data"]}
        return rows.get(node, {}).get("task-succeeded")

    produce_events(mod.app, run("r1") + run("r2"))
    first = FlowerBridge(mod.app, flower_server.broker_url, since=time.time() - 60).start()
    try:
        wait_until(lambda: succeeded() == 2, 30, "Flower to count 2 successes", interval=0.3)
    finally:
        first.stop()
    produce_events(mod.app, run("r3"))  # while no bridge runs
    second = FlowerBridge(mod.app, flower_server.broker_url).start()
    try:
        wait_until(lambda: succeeded() == 3, 30, "Flower to count the success sent while the bridge was down",
                   interval=0.3)
        time.sleep(2)
        assert succeeded() == 3
    finally:
        second.stop()


def test_a_message_without_an_id_leaves_no_phantom_reserved_task(mod: ModuleType) -> None:
    """A message with no id header is rejected; with events_coalesce=0 it was also received. Flower's
    inspect reserved must not list it forever."""
    bridge = FlowerBridge(mod.app, "redis://127.0.0.1:1/0")
    bridge._track(task_event("task-received", None, 1.0))  # type: ignore[arg-type]
    bridge._track(task_event("task-rejected", None, 1.1))  # type: ignore[arg-type]
    assert bridge.reserved("taskq@host:1") == [] and bridge.active("taskq@host:1") == []
