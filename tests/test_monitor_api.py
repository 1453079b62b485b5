"""The monitor's REST API with a real worker on the embedded broker: submit, result, stream, dead letters,
clear 4xx errors, the token, /metrics, and a schemathesis fuzz over the OpenAPI schema (no 5xx)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from taskq.monitor.core import Monitor, MonitorConfig
from taskq.monitor.web import create_app
from tests.monitor_support import running_monitor, wait_state
from tests.support import local_app_module, wait_until, worker_thread

APP = "tests.apps.monitorapp"
WORK = f"{APP}.work"
LOCAL = "http://127.0.0.1"  # the monitor answers requests for host names only with a token


@pytest.fixture
def mod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = local_app_module(APP, str(tmp_path / "q.db"), monkeypatch, MONITOR_MARKER=str(tmp_path / "ready"))
    yield module
    module.app.close()


@pytest.fixture
def monitor(mod: ModuleType) -> Iterator[Monitor]:
    with running_monitor(mod.app) as m:
        yield m


@pytest.fixture
def client(monitor: Monitor) -> Iterator[TestClient]:
    with TestClient(create_app(monitor), base_url=LOCAL) as c:
        yield c


def result_of(client: TestClient, task_id: str, timeout: float = 30) -> dict:
    box: dict = {}

    def ready() -> bool:
        r = client.get(f"/api/tasks/{task_id}/result")
        if r.status_code == 200 and r.json()["status"] in ("SUCCESS", "FAILURE"):
            box.update(r.json())
            return True
        assert r.status_code == 404, r.text
        return False
    wait_until(ready, timeout, f"a final result for {task_id}")
    return box


def test_errors_are_clear_4xx(client: TestClient) -> None:
    r = client.post("/api/tasks", json={"task": "no.such.task"})
    assert r.status_code == 404 and "not registered" in r.json()["detail"] and WORK in r.json()["detail"]
    r = client.post("/api/tasks", json={"task": WORK, "args": [1, 2, 3, 4]})
    assert r.status_code == 422 and "too many positional arguments" in r.json()["detail"]
    r = client.post("/api/tasks", json={"task": WORK, "kwargs": {"nope": 1}})
    assert r.status_code == 422 and "signature" in r.json()["detail"]
    assert client.post("/api/tasks", json={"args": []}).status_code == 422  # no task name
    assert client.post("/api/tasks", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    r = client.get("/api/tasks/0123456789abcdef/result")
    assert r.status_code == 404 and "unknown task id" in r.json()["detail"]
    assert client.get("/api/tasks/0123456789abcdef").status_code == 404
    assert client.get("/api/tasks?state=BOGUS").status_code == 422
    assert client.get("/api/tasks?limit=0").status_code == 422
    assert client.get("/api/dead-letters/no.such.task").status_code == 404
    r = client.post(f"/api/dead-letters/{APP}.fragile/replay", json={})
    assert r.status_code == 422 and "'ids'" in r.json()["detail"]
    r = client.post(f"/api/dead-letters/{APP}.fragile/replay", json={"ids": ["nope"]})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.get("/tasks/0123456789abcdef").status_code == 404
    schema = client.get("/openapi.json").json()
    assert {"/api/tasks", "/api/tasks/{task_id}/result", "/api/tasks/{task_id}/stream", "/api/workers", "/api/lag",
            "/api/dead-letters/{task}/replay"} <= set(schema["paths"])


def test_submit_result_stream_and_dead_letter_replay(mod: ModuleType, client: TestClient, tmp_path: Path) -> None:
    with worker_thread(mod.app, concurrency=4):
        r = client.post("/api/tasks", json={"task": WORK, "args": [21], "kwargs": {"user": "ann"}})
        assert r.status_code == 202, r.text
        assert result_of(client, r.json()["id"])["result"] == 42

        r = client.post("/api/tasks", json={"task": f"{APP}.tokens", "args": ["one two three four"]})
        with client.stream("GET", f"/api/tasks/{r.json()['id']}/stream?timeout=30") as stream:
            body = "".join(stream.iter_text())
        assert [line[6:] for line in body.splitlines() if line.startswith("data: ")][:4] == \
            ['"one"', '"two"', '"three"', '"four"']
        assert "event: done" in body and '"status":"SUCCESS"' in body

        failed = [client.post("/api/tasks", json={"task": f"{APP}.fragile", "args": [i]}).json()["id"]
                  for i in range(3)]
        for task_id in failed:
            res = result_of(client, task_id)
            assert res["status"] == "FAILURE" and "marker missing" in res["error"] and "Traceback" in res["traceback"]
        letters = client.get(f"/api/dead-letters/{APP}.fragile").json()
        assert {d["id"] for d in letters} == set(failed)
        assert letters[0]["headers"]["error-type"].endswith("ValueError") and letters[0]["reason"]

        (tmp_path / "ready").touch()
        r = client.post(f"/api/dead-letters/{APP}.fragile/replay", json={"ids": [failed[0]]})
        assert r.status_code == 200 and r.json() == {"replayed": [failed[0]]}
        assert result_of(client, failed[0])["result"] == 0
        r = client.post(f"/api/dead-letters/{APP}.fragile/replay", json={"all": True})
        assert sorted(r.json()["replayed"]) == sorted(failed[1:])  # not the one that succeeded since
        assert [result_of(client, t)["result"] for t in failed] == [0, 10, 20]


@pytest.fixture(params=["local", "kafka"])
def any_mod(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            unique: str) -> Iterator[ModuleType]:
    """The test app on the embedded broker, or on Kafka and Redis with fresh topics and group."""
    import importlib

    if request.param == "local":
        module = local_app_module(APP, str(tmp_path / "q.db"), monkeypatch)
    else:
        monkeypatch.setenv("TASKQ_BROKER_URL", request.getfixturevalue("kafka_url"))
        monkeypatch.setenv("TASKQ_RESULT_BACKEND", request.getfixturevalue("redis_url"))
        monkeypatch.setenv("TASKQ_TOPIC_PREFIX", f"m{unique}.")
        monkeypatch.setenv("TASKQ_GROUP", f"m{unique}")
        monkeypatch.setenv("TASKQ_DEFAULT_PARTITIONS", "2")
        module = importlib.reload(importlib.import_module(APP))
    yield module
    module.app.close()


def test_events_from_a_real_worker(any_mod: ModuleType) -> None:
    """Tasks, their tree, workers and metrics come from the worker's own events (both brokers)."""
    mod = any_mod
    with running_monitor(mod.app) as monitor, TestClient(create_app(monitor), base_url=LOCAL) as client, \
            worker_thread(mod.app, concurrency=4, name="mon-worker"):
        root = mod.fan_out.delay(3, user="ann")
        work = mod.work.delay(5, user="bob")
        wait_state(monitor, work.id, "SUCCESS")
        wait_state(monitor, root.id, "SUCCESS")
        wait_until(lambda: len(monitor.state.family(root.id)) == 6, 30, "the whole tree of fan_out")
        detail = client.get(f"/api/tasks/{root.id}").json()
        children = detail["tree"]["children"]
        assert len(children) == 4 and sorted(len(c["children"]) for c in children) == [0, 0, 0, 1]
        t = detail["task"]
        assert t["topic"] == mod.fan_out.topic and t["offset"] is not None and t["worker"] == "mon-worker"
        assert t["sent"] <= t["received"] <= t["started"] <= t["finished"]
        wait_until(lambda: any(w["name"] == "mon-worker" and w["alive"] and w["partitions"]
                               for w in client.get("/api/workers").json()), 30, "the worker's heartbeat")
        listing = client.get("/api/tasks", params={"key": "bob"}).json()
        assert [x["id"] for x in listing["tasks"]] == [work.id]
        wanted = (f'taskq_task_events_total{{state="SUCCESS",task="{WORK}"}}', "taskq_task_runtime_seconds_bucket",
                  "taskq_consumer_lag{")  # the lag sampler runs on its own clock
        wait_until(lambda: all(w in client.get("/metrics").text for w in wanted), 30, f"{wanted} in /metrics")


def test_token_is_required_when_set(mod: ModuleType) -> None:
    monitor = Monitor(mod.app, MonitorConfig(token="s3cret"))
    with TestClient(create_app(monitor), base_url=LOCAL) as c:
        assert c.get("/api/workers").status_code == 401
        assert c.get("/").status_code == 401
        assert c.get("/api/workers", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/workers", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.get("/workers?token=s3cret", follow_redirects=False)
        assert r.status_code == 303 and "token" not in r.headers["location"]
        assert c.get("/workers").status_code == 200  # the cookie set above
        assert c.get("/static/app.css").status_code == 200  # assets need no token


def test_metrics_exposition(client: TestClient, monitor: Monitor) -> None:
    monitor.sampler.sample()
    text = client.get("/metrics").text
    for name in ("taskq_workers_alive", "taskq_monitor_tasks_kept", "taskq_consumer_lag",
                 "taskq_task_runtime_seconds", "taskq_task_queue_wait_seconds", "taskq_task_retries",
                 "taskq_dead_letters"):
        assert f"# HELP {name}" in text, name


def test_fuzzing_the_api_finds_no_server_error(monitor: Monitor) -> None:
    """schemathesis generates requests from the OpenAPI schema; no answer may be a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(monitor), headers={"Host": "127.0.0.1"})
    schema = schema.exclude(path_regex=r"/(stream|events)$")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 10
    started, calls = time.monotonic(), 0
    for op in operations:
        strategy = op.as_strategy()

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=LOCAL)
            case.validate_response(response, checks=[not_a_server_error])

        from hypothesis import given

        given(strategy)(run)()
    print(f"\nMONITOR fuzz: {calls} requests over {len(operations)} operations in {time.monotonic() - started:.1f} s")


def test_taskq_monitor_command_serves_on_loopback_with_a_token(tmp_path: Path) -> None:
    """``taskq monitor -A app --port N`` with TASKQ_MONITOR_TOKEN: loopback only, token required."""
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.monitor_support import free_port
    from tests.support import ROOT

    port = free_port()
    env = {**os.environ, "TASKQ_LOCAL_PATH": str(tmp_path / "cli.db"), "TASKQ_MONITOR_TOKEN": "tok",
           "PYTHONPATH": str(ROOT)}
    env.pop("TASKQ_BROKER_URL", None)
    env.pop("TASKQ_RESULT_BACKEND", None)
    proc = subprocess.Popen([sys.executable, "-m", "taskq.cli", "monitor", "-A", APP, "--port", str(port),
                             "--since", "1h"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/health"

    def status(headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0
    try:
        wait_until(lambda: status({}) != 0 or proc.poll() is not None, 60, "taskq monitor to listen")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert status({}) == 401
        assert status({"Authorization": "Bearer tok"}) == 200
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
    finally:
        proc.terminate()
        proc.wait(30)


def test_llm_tokens_and_cost_reach_the_metrics(mod: ModuleType, monitor: Monitor, client: TestClient) -> None:
    """Usage stored in a result's meta["llm"] (as taskq.llm's tasks store it) is counted per task and model."""
    from taskq.results.base import ResultRecord
    from tests.monitor_support import lifecycle, produce_events

    app = mod.app
    now = time.time()
    app.backend.store_many([
        ResultRecord(f"llm{i}", "SUCCESS", {"text": "hi"}, task="tasks.llm.infer", date_done=now,
                     meta={"llm": {"model": "claude-haiku-4-5", "input_tokens": 10, "output_tokens": 5 + i,
                                   "cost": 0.001, "user": "ann"}}) for i in range(3)])
    produce_events(app, [e for i in range(3) for e in lifecycle(f"llm{i}", now, name="tasks.llm.infer")]
                   + lifecycle("plain", now, name=WORK))
    wait_until(lambda: monitor.usage.read >= 4, 30, "the usage reader to read the results")
    text = client.get("/metrics").text
    assert 'taskq_llm_tokens_total{direction="input",model="claude-haiku-4-5",task="tasks.llm.infer"} 30.0' in text
    assert 'taskq_llm_tokens_total{direction="output",model="claude-haiku-4-5",task="tasks.llm.infer"} 18.0' in text
    assert 'taskq_llm_cost_usd_total{model="claude-haiku-4-5",task="tasks.llm.infer"} 0.003' in text


def test_events_with_fields_of_the_wrong_type_break_no_page(mod: ModuleType) -> None:
    """Any producer can write the events topic: a field of the wrong type is ignored, every page still answers."""
    from tests.monitor_support import produce_events, task_event

    ts = time.time()
    wrong = {"runtime": "slow", "sent": "yesterday", "received": [1], "started": {"a": 1}, "finished": "x",
             "attempt": "two", "partition": "p", "offset": 1.5, "task": 5, "worker": 7, "exc_type": 3, "topic": 9,
             "state": ["SUCCESS"]}
    events = [task_event("task-failed", "wrong-types", ts, **wrong),
              task_event("task-skipped", "wrong-types", ts + 2, state={"a": 1}),
              task_event("task-succeeded", "huge-times", ts, sent=1e300, finished=-1e300, runtime=1e300),
              {"v": 1, "type": "worker-heartbeat", "ts": ts, "worker": "odd-worker", "freq": "often",
               "partitions": 5, "pid": "x", "concurrency": "many", "active": [], "processed": {}},
              {"v": 1, "type": "worker-heartbeat", "ts": 1e300, "worker": "far-future", "partitions": [[1, "a"]]}]
    with running_monitor(mod.app) as monitor:
        produce_events(mod.app, [task_event("task-sent", "fine", ts)] + events)
        wait_until(lambda: monitor.state.task("huge-times") is not None and len(monitor.state.workers()) == 2, 30,
                   "the events in the monitor")
        with TestClient(create_app(monitor), base_url=LOCAL, raise_server_exceptions=False) as c:
            for url in ["/", "/tasks", "/tasks/wrong-types", "/tasks/huge-times", "/tasks?name=demo.work",
                        "/tasks?since=2020-01-01T00:00", "/workers", "/api/tasks", "/api/tasks/wrong-types",
                        "/api/workers", "/metrics"]:
                r = c.get(url)
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
            assert "fine" in c.get("/tasks").text
            task = c.get("/api/tasks/wrong-types").json()["task"]
            assert task["state"] == "FAILURE" and task["runtime"] is None and isinstance(task["sent"], float)


def test_waiting_tasks_of_an_unknown_topic_is_a_page_not_a_server_error(client: TestClient) -> None:
    r = client.get("/tasks", params={"topic": "taskq.gone", "partition": "0", "waiting": "1"})
    assert r.status_code == 200, r.text[:300]
    assert 'id="unreadable"' in r.text and "taskq.gone" in r.text


def test_taskq_monitor_says_why_it_cannot_start_without_a_traceback() -> None:
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = {**os.environ, "TASKQ_BROKER_URL": "kafka://127.0.0.1:1", "TASKQ_CONNECT_TIMEOUT": "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "taskq.cli", "monitor", "-A", APP, "--port", "1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "Error: cannot reach Kafka at 127.0.0.1:1" in out.stderr, out.stderr[-2000:]


def test_pages_say_503_when_the_result_backend_is_down(tmp_path: Path) -> None:
    from taskq import Taskq

    app = Taskq("down", local_path=str(tmp_path / "q.db"), backend="redis://:hunter2@127.0.0.1:1/0",
                connect_timeout=0.5)  # nothing listens there
    try:
        with running_monitor(app) as monitor, TestClient(create_app(monitor), base_url=LOCAL) as c:
            for url in ("/tasks/abc", "/tasks?id=abc", "/api/tasks/abc"):
                r = c.get(url)
                assert r.status_code == 503 and "unavailable" in r.json()["detail"], (url, r.status_code, r.text)
                assert "hunter2" not in r.text and ":***@127.0.0.1:1" in r.text
            assert c.get("/tasks").status_code == 200
    finally:
        app.close()


def test_dead_letters_come_a_page_at_a_time(mod: ModuleType) -> None:
    """5,000 dead letters made a 17 MB page and a 95 MB API answer, fetched again on every live refresh."""
    from taskq.brokers.base import Record
    from taskq.deadletter import dead_letter_headers

    app, topic = mod.app, mod.fragile.topic
    app.ensure_topics({topic: 1, app.dlq_topic(topic): 1})
    for i in range(250):
        headers = [("id", f"id{i:03d}".encode()), ("task", mod.fragile.name.encode())]
        original = Record(topic, 0, i, b"k", b'[[1], {}]', headers)
        app.producer.produce(app.dlq_topic(topic), b"k", original.value,
                             dead_letter_headers(original, "error", "ValueError", "boom", "Traceback ...", "w"))
    app.flush()
    with running_monitor(app) as monitor, TestClient(create_app(monitor), base_url=LOCAL) as c:
        def ids(query: str) -> list[str]:
            return [d["id"] for d in c.get(f"/api/dead-letters/{mod.fragile.name}{query}").json()]
        assert ids("") == [f"id{i:03d}" for i in range(100)]
        assert ids("?offset=200&limit=1000") == [f"id{i:03d}" for i in range(200, 250)]
        assert c.get(f"/api/dead-letters/{mod.fragile.name}?limit=0").status_code == 422
        page = c.get(f"/dead-letters/{mod.fragile.name}").text
        assert page.count('class="letter"') == 100 and "Replay all 250" in page and 'id="next-letters"' in page
        last = c.get(f"/dead-letters/{mod.fragile.name}?page=2").text
        assert last.count('class="letter"') == 50 and "id249" in last and 'id="next-letters"' not in last
