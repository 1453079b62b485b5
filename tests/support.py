"""Helpers for tests that run real worker processes."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from taskq.app import Taskq
from taskq.brokers.base import Record
from taskq.results.base import ResultRecord
from taskq.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """``taskq worker`` in a child process, its log collected in memory."""

    def __init__(self, app_path: str, env: dict[str, str], *args: str, name: str = "w") -> None:
        self.name = name
        cmd = [sys.executable, "-m", "taskq.cli", "--log-level", "INFO", "worker", "-A", app_path, "-n", name, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "RECORDER_WORKER": name},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} never logged {text!r}:\n{self.log}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_results(app: Taskq, ids: Sequence[str], timeout: float) -> list[ResultRecord | None]:
    """Poll until every id has a final result or ``timeout`` passes; returns the records."""
    deadline = time.monotonic() + timeout
    while True:
        records = app.backend.get_many(ids)
        if all(r is not None and r.ready for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def env_for(kafka_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """Environment that points the recorder app at fresh topics, group and keys."""
    return {"TASKQ_BROKER_URL": kafka_url, "TASKQ_RESULT_BACKEND": redis_url,
            "TASKQ_TOPIC_PREFIX": f"{prefix}.", "TASKQ_GROUP": f"{prefix}.group",
            "RECORDER_REDIS_URL": redis_url, "RECORDER_PREFIX": prefix, "PYTHONPATH": str(ROOT)}


def recorder_client(env: dict[str, str]) -> tuple[Taskq, object]:
    """A caller-side app matching the recorder worker's settings, and its ``work`` task."""
    app = Taskq("recorder", broker=env["TASKQ_BROKER_URL"], backend=env["TASKQ_RESULT_BACKEND"],
                topic_prefix=env["TASKQ_TOPIC_PREFIX"], group=env["TASKQ_GROUP"])

    def work(key: str, seq: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker process only")

    task = app.task(work, name="tests.apps.recorder.work", key="key")
    return app, task


# --------------------------------------------------------------------------- reliability tests

from collections.abc import Callable  # appended section


def client_app(env: dict[str, str], name: str, **settings: object) -> Taskq:
    """A caller-side app with the broker, backend, prefix and group of a worker started with ``env``."""
    return Taskq(name, broker=env["TASKQ_BROKER_URL"], backend=env["TASKQ_RESULT_BACKEND"],
                 topic_prefix=env["TASKQ_TOPIC_PREFIX"], group=env["TASKQ_GROUP"], **settings)


def reliable_client(env: dict[str, str], **settings: object) -> tuple[Taskq, dict[str, object]]:
    """A caller-side app matching ``tests.apps.reliable`` and its tasks by short name."""
    app = client_app(env, "reliable", **settings)

    def flaky(self, key: str, fails: int, countdown: float | None = None) -> int:
        raise AssertionError("runs in the worker process only")

    def stamp(key: str) -> float:
        raise AssertionError("runs in the worker process only")

    def echo(key: str, seq: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker process only")

    tasks = {
        "flaky": app.task(flaky, name="tests.apps.reliable.flaky", key="key", bind=True),
        "stamp": app.task(stamp, name="tests.apps.reliable.stamp", key="key"),
        "echo": app.task(echo, name="tests.apps.reliable.echo", key="key"),
    }
    return app, tasks


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it is true; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def fault_line(name: str, sent: int, finished: int, lost: int, duplicates: int, extra: str = "") -> str:
    """Print (and return) the one-line summary of a fault test: ``FAULT name: sent=… finished=… …``."""
    line = f"FAULT {name}: sent={sent} finished={finished} lost={lost} duplicates_executed={duplicates}"
    if extra:
        line += f" {extra}"
    print("\n" + line, flush=True)
    return line


def start_worker(app: Taskq, **options: object) -> tuple[Worker, threading.Thread, list[BaseException]]:
    """A Worker running in a daemon thread, and the list that gets what its run() raised."""
    options.setdefault("stop_timeout", 20.0)
    worker = Worker(app, **options)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - for the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    return worker, thread, errors


@contextmanager
def worker_thread(app: Taskq, **options: object) -> Iterator[tuple[Worker, threading.Thread]]:
    """A Worker running in a thread; on exit it is stopped and checked to have stopped cleanly."""
    worker, thread, errors = start_worker(app, **options)
    assert worker.ready.wait(60) and not errors, f"worker never polled: {errors}"
    try:
        yield worker, thread
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive(), "the worker did not stop within 60 s"
    assert not errors, f"the worker crashed: {errors!r}"


def read_records(app: Taskq, topic: str, count: int, timeout: float = 15.0) -> list[Record]:
    """``count`` records of ``topic`` from the start (or what came within ``timeout``), by a fresh group."""
    consumer = app.broker.consumer(f"{app.group}.reader.{time.time_ns()}", [topic])
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            got.extend(consumer.consume(500, 0.2))
    finally:
        consumer.close()
    return got


def local_app_module(module_name: str, db_path: str, monkeypatch: Any, **env: str) -> ModuleType:
    """Import (afresh) a test app module configured for the embedded broker in ``db_path``."""
    monkeypatch.setenv("TASKQ_LOCAL_PATH", db_path)
    monkeypatch.delenv("TASKQ_BROKER_URL", raising=False)
    monkeypatch.delenv("TASKQ_RESULT_BACKEND", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return importlib.reload(importlib.import_module(module_name))


# --------------------------------------------------------------------------- events, inspect, lag

import json  # appended section
import subprocess


def taskq_cli(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    """Run ``taskq ARGS`` in a child process with ``env``; its stdout (fails on a non-zero exit)."""
    out = subprocess.run([sys.executable, "-m", "taskq.cli", *args], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"taskq {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def taskq_lag(env: dict[str, str], group: str) -> dict[tuple[str, int], tuple[int | None, int, int]]:
    """``taskq lag --json`` as (topic, partition) -> (committed, end, lag); checks the total adds up."""
    report = json.loads(taskq_cli(env, "lag", "--group", group, "--json"))
    rows = {(p["topic"], p["partition"]): (p["committed"], p["end"], p["lag"]) for p in report["partitions"]}
    assert report["total"] == sum(lag for _, _, lag in rows.values())
    return rows


def kafka_describe(kafka_url: str, group: str) -> dict[tuple[str, int], tuple[int | None, int, int | None]]:
    """What Kafka's ConsumerGroupCommand prints for ``group``: (current offset, log end offset, lag)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from services import KAFKA_LIBS, java_binary

    out = subprocess.run([java_binary(), "-cp", f"{KAFKA_LIBS}/*",
                          "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                          "--bootstrap-server", kafka_url.removeprefix("kafka://"), "--describe", "--group", group],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows: dict[tuple[str, int], tuple[int | None, int, int | None]] = {}
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group:
            current, lag = (None if v == "-" else int(v) for v in (cols[3], cols[5]))
            rows[(cols[1], int(cols[2]))] = (current, int(cols[4]), lag)
    assert rows, f"ConsumerGroupCommand printed no partitions:\n{out.stdout}\n{out.stderr}"
    return rows
