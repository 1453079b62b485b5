"""Helpers for the monitor's tests: a running Monitor, events in the contract's schema, a served app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from taskq.monitor.consumer import events_topic
from taskq.monitor.core import Monitor, MonitorConfig
from taskq.app import Taskq
from tests.support import wait_until


def task_event(kind: str, task_id: str, ts: float, name: str = "demo.work", **extra: Any) -> dict[str, Any]:
    """A task event as the contract (schema v1) describes it."""
    event = {"v": 1, "type": kind, "ts": ts, "worker": None if kind == "task-sent" else "host:1", "id": task_id,
             "root_id": task_id, "parent_id": None, "task": name, "key": "k", "topic": f"taskq.{name}",
             "partition": 0, "offset": None, "attempt": 0, "sent": ts, "received": None, "started": None,
             "finished": None, "runtime": None, "exc_type": None, "exc_message": None}
    event.update(extra)
    return event


def produce_events(app: Taskq, events: list[dict[str, Any]]) -> None:
    """Publish events to the app's events topic, keyed by root id, and wait for the acknowledgements."""
    topic = events_topic(app)
    app.ensure_topics({topic: app.settings.default_partitions})
    producer = app.producer
    for e in events:
        producer.produce(topic, (e.get("root_id") or e.get("worker") or "").encode(), orjson.dumps(e))
    app.flush()


def lifecycle(task_id: str, ts: float, name: str = "demo.work") -> list[dict[str, Any]]:
    """sent, received, started, succeeded for one task."""
    return [task_event("task-sent", task_id, ts, name),
            task_event("task-received", task_id, ts + 0.001, name, received=ts + 0.001),
            task_event("task-started", task_id, ts + 0.002, name, started=ts + 0.002),
            task_event("task-succeeded", task_id, ts + 0.003, name, finished=ts + 0.003, runtime=0.001)]


@contextmanager
def running_monitor(app: Taskq, **config: Any) -> Iterator[Monitor]:
    """A started Monitor that has read the history present at start."""
    config.setdefault("lag_interval", 0.5)
    monitor = Monitor(app, MonitorConfig(**config)).start()
    try:
        assert monitor.consumer.caught_up.wait(60), "the monitor never caught up with the events topic"
        yield monitor
    finally:
        monitor.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(monitor: Monitor) -> Iterator[str]:
    """The monitor's web app on a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    from taskq.monitor.web import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_state(monitor: Monitor, task_id: str, state: str, timeout: float = 30) -> None:
    wait_until(lambda: (t := monitor.state.task(task_id)) is not None and t.state == state, timeout,
               f"task {task_id} to reach {state} in the monitor (now "
               f"{getattr(monitor.state.task(task_id), 'state', None)})")


def now() -> float:
    return time.time()
