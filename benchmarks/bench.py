"""``taskq bench``: throughput, latency, keyed-async and soak benchmarks on real services.

Benchmarks (``taskq bench NAME --help`` for options):

``enqueue``
    one process calls ``.delay()`` of a no-op task ``n`` times; timed until ``app.flush()`` returns,
    i.e. every message acknowledged by Kafka (``acks=all`` + idempotence, the producer defaults).
``e2e``
    ``n`` no-op tasks are queued first (not timed), then ONE worker process is started
    (``taskq worker -A benchmarks.app:bench_app``); timed from its start until every result is stored
    and the group's offsets are committed. Also the worker's CPU seconds per task
    (``/proc/<pid>/stat`` utime+stime) and its peak RSS (``VmHWM``).
``latency``
    one worker running; one task at a time, ``delay().get()``; percentiles of the round trips.
``llm``
    one ``--pool asyncio -c 1000`` worker and an async task that awaits ``asyncio.sleep(1.0)``,
    ``n`` tasks keyed over ``--keys`` keys; sustained tasks/s and whether per-key order was kept.
``soak``
    steady load at ``--rate`` tasks/s for ``--seconds``; the worker's RSS every ``--sample`` s.
``growth``
    how cost grows: start-up, RSS and throughput with 1-200 task types, MB/s with 100 KB payloads,
    dispatcher memory over a million distinct keys (``benchmarks/growth.py``).
``rebalance``
    steady keyed load on two workers, a third joins, the first leaves (SIGTERM); the longest gap between
    completions on the other workers around each change (:mod:`benchmarks.rebalance`).

Every benchmark runs against ``TASKQ_BROKER_URL`` / ``TASKQ_RESULT_BACKEND``, or with
``--start-services`` against a Kafka and a Redis of its own (``scripts/services.py``), stopped at the
end. Each run uses fresh topics and a fresh consumer group (``taskq.bench.<run id>.*``) that are
deleted afterwards. Progress goes to stderr; the results table (or ``--json``) to stdout.

:func:`make_app`, :class:`WorkerProcess`, :class:`KeyCounter` and the ``run_*`` functions are reused
by ``benchmarks/compare.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from unittest import mock

import click

from benchmarks.app import INFER, NOOP, SLEEP, STAMP, make_app  # noqa: F401 - the tasks live where the worker loads them
from taskq.app import Taskq
from taskq.message import H_ID
from taskq.topics import DLQ_PARTITIONS

if TYPE_CHECKING:  # rich is imported where it is used: `taskq worker` should not pay for it
    from rich.console import Console
    from rich.progress import Progress

WORKER_APP = "benchmarks.app:bench_app"  # only the tasks: the worker does not import the commands
REPO = Path(__file__).resolve().parent.parent  # the checkout: worker processes import benchmarks/ from here
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def __getattr__(name: str) -> Any:
    """``benchmarks.bench:bench_app`` still names the bench app (it lives in :mod:`benchmarks.app`)."""
    if name == "bench_app":
        from benchmarks import app
        return app.bench_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- services


@dataclass
class Target:
    """Where a benchmark runs: broker and result backend URLs."""

    broker: str
    backend: str
    started_here: bool = False

    def app(self, run: str, **settings: Any) -> Taskq:
        return make_app(self.broker, self.backend, **run_settings(run), **settings)

    def worker_env(self, run: str, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, TASKQ_BROKER_URL=self.broker, TASKQ_RESULT_BACKEND=self.backend,
                   PYTHONUNBUFFERED="1", PYTHONPATH=path, **extra)
        env.update({"TASKQ_" + k.upper(): str(v) for k, v in run_settings(run).items()})
        return env


def run_settings(run: str) -> dict[str, str]:
    """Fresh topics and consumer group for one run."""
    return {"topic_prefix": f"taskq.bench.{run}.", "group": f"taskq.bench.{run}"}


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


def load_services_module() -> Any:
    """``scripts/services.py`` of this checkout (imported by path; it is not part of the package)."""
    candidates = [REPO / "scripts" / "services.py",
                  Path.cwd() / "scripts" / "services.py"]
    for path in candidates:
        if path.is_file():
            name = "taskq_bench_services"
            if name in sys.modules:
                return sys.modules[name]
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look the module up while it executes
            spec.loader.exec_module(module)
            return module
    raise click.ClickException("--start-services needs scripts/services.py (run from a taskq checkout); "
                               "looked in " + ", ".join(str(p) for p in candidates))


@contextlib.contextmanager
def services(start: bool, console: Console | None = None) -> Iterator[Target]:
    """The configured services, or (``start``) one Kafka node and one Redis started here."""
    if not start:
        broker = os.environ.get("TASKQ_BROKER_URL", "")
        backend = os.environ.get("TASKQ_RESULT_BACKEND", "")
        if not broker:
            raise click.UsageError("no broker configured: set TASKQ_BROKER_URL and TASKQ_RESULT_BACKEND "
                                   "(e.g. from `python scripts/services.py start`) or pass --start-services")
        yield Target(broker, backend)
        return
    svc = load_services_module()
    if console is not None:
        console.print("[dim]starting Kafka (1 node) and Redis with scripts/services.py ...[/]")
    redis_server = svc.RedisServer().start()
    kafka = None
    try:
        kafka = svc.KafkaCluster().start(brokers=1)
        if console is not None:
            console.print(f"[dim]Kafka {kafka.url} ready in {kafka.startup_seconds:.1f} s, Redis {redis_server.url}; "
                          "priming Kafka ...[/]")
        prime_kafka(kafka.url)
        yield Target(kafka.url, redis_server.url, started_here=True)
    finally:
        import gc

        gc.collect()  # destroy this process's Kafka clients first: no reconnect noise once Kafka is gone
        if kafka is not None:
            kafka.stop()
        redis_server.close()


def prime_kafka(url: str, messages: int = 20000, round_trips: int = 3000, timeout: float = 120.0) -> None:
    """Put a fresh Kafka through what any client's first run would pay for once, so nobody is timed on it.

    A new cluster creates ``__consumer_offsets`` on the first group request and answers "coordinator
    load in progress" for seconds; its JVM is not warmed up yet. This produces ``messages``
    (idempotent, ``acks=all``) to a scratch topic and consumes and commits them in a group, then sends
    ``round_trips`` records one at a time, each fetched before the next (a commit every tenth). The
    batches alone left the JVM's paths for small requests unoptimised, and whichever framework's round
    trips came first paid for it. Plain confluent-kafka; the topic is deleted at the end.
    """
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = url[len("kafka://"):]
    topic = f"taskq.bench.prime.{new_run_id()}"
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 0})
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, b"x" * 64, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(max(1.0, deadline - time.monotonic()))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    consumer.subscribe([topic])
    got = 0
    try:
        while got < messages and time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.2)
            got += len(batch)
            if batch:
                with contextlib.suppress(KafkaException):
                    consumer.commit(message=batch[-1], asynchronous=False)
        for i in range(round_trips):
            producer.produce(topic, b"x" * 64, key=str(i).encode())
            producer.poll(0)
            message = None
            while message is None and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error():
                    message = None
            if message is None:
                break
            if i % 10 == 9:  # as a worker does at a low rate (one commit per message piles up in the client)
                consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
        producer.flush(5)
        with contextlib.suppress(Exception):
            admin.delete_topics([topic])[topic].result()


def prepare_topics(app: Taskq, task_names: Sequence[str]) -> None:
    """Create the topics the worker would create (kept out of timings, as for a worker restarted in a
    running deployment): task, dead-letter, delay, events and revocations topics."""
    from taskq.revocations import revoked_topic

    topics: dict[str, int] = {}
    for name in task_names:
        task = app.get_task(name)
        topics[task.topic] = task.partitions
        topics[app.dlq_topic(task.topic)] = DLQ_PARTITIONS
    app.ensure_topics(topics)
    app.ensure_topics({t: app.settings.default_partitions for t in app.delay_topics})
    if app.settings.events:
        app.ensure_topics({app.events_topic: app.settings.default_partitions})
    app.broker.ensure_compacted_topic(revoked_topic(app), app.settings.result_expires,
                                      app.settings.replication_factor)


def cleanup(app: Taskq, ids: Sequence[str] = ()) -> None:
    """Best effort: delete this run's results and (on Kafka) its topics, then close the app."""
    with contextlib.suppress(Exception):
        for i in range(0, len(ids), 5000):
            app.backend.forget(ids[i:i + 5000])
    with contextlib.suppress(Exception):
        broker = app.broker
        admin = getattr(broker, "admin", None)
        if admin is not None:
            prefix = app.settings.topic_prefix
            doomed = [t for t in broker.list_topics() if t.startswith(prefix)]
            if doomed:
                for future in admin.delete_topics(doomed, operation_timeout=10).values():
                    with contextlib.suppress(Exception):
                        future.result()
    with contextlib.suppress(Exception):
        app.close()


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime, cutime+cstime) in clock ticks, or None if ``pid`` is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # rest[0] is field 3 (state)
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def _proc_status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class WorkerProcess:
    """A worker command run as a subprocess, with CPU and memory read from ``/proc``.

    CPU and memory figures cover the whole process tree (prefork children, dramatiq's workers).
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, name: str = "worker",
                 cwd: str | None = None) -> None:
        self.argv = list(argv)
        self.env = env
        self.name = name
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix=f"taskq-bench-{name}-", suffix=".log", delete=False)
        self.log_path = self._log.name

    def start(self) -> Self:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        """Raise if the worker has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise click.ClickException(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float:
        """User + system CPU of the tree so far (including reaped children)."""
        ticks = 0
        for i, pid in enumerate(process_tree(self.pid)):
            stat = _proc_stat(pid)
            if stat is not None:
                ticks += stat[1] + (stat[2] if i == 0 else 0)
        return ticks / CLK_TCK

    def rss_mb(self) -> float:
        return sum(_proc_status_kb(p, "VmRSS") for p in process_tree(self.pid)) / 1024

    def peak_rss_mb(self) -> float:
        """Sum of ``VmHWM`` over the tree (the peak of each process)."""
        return sum(_proc_status_kb(p, "VmHWM") for p in process_tree(self.pid)) / 1024

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the worker's process group, SIGKILL after ``timeout``; remove the log."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def taskq_worker(target: Target, run: str, concurrency: int, pool: str, tasks: Sequence[str] = (NOOP,),
                 **env: str) -> WorkerProcess:
    argv = [sys.executable, "-m", "taskq.cli", "worker", "-A", WORKER_APP, "-c", str(concurrency), "--pool", pool]
    for name in tasks:
        argv += ["-Q", name]
    return WorkerProcess(argv, target.worker_env(run, **env), name="taskq-worker")


# --------------------------------------------------------------------------- waiting for results


class KeyCounter:
    """Counts which of many Redis keys exist, cheaply enough to poll often while a worker runs.

    The keys are split in chunks whose ``EXISTS k1 .. kN`` commands are packed once; a poll pipelines
    the chunks not yet complete and sums the integer replies. A chunk nine tenths there is split in
    ten, so polls narrow down to the keys still missing and cost little near the end (split earlier,
    the polls of a drain's middle grow to thousands of commands and slow the worker they watch). Until a first
    key exists, a poll asks only for the first ``probe`` keys (every framework starts with the oldest
    tasks), with a full count at least every ``full_every`` seconds. ``first_seen`` is when a first key was
    seen to exist: the probe's answer, not the end of the full count that follows it (counting 20,000 keys
    took ~10 ms, which would count as the worker's). Works for any key type (Celery's strings, Dramatiq's
    lists), so every framework is watched the same way.
    """

    def __init__(self, redis_url: str, keys: Sequence[str], chunk: int = 1000, probe: int = 500,
                 full_every: float = 0.05) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.conn = self.client.connection_pool.get_connection()
        self.pending = [self._chunk(keys[i:i + chunk]) for i in range(0, len(keys), chunk)]
        self.probe = self.conn.pack_command("EXISTS", *keys[:probe]) if keys else None
        self.full_every = full_every
        self.last_full = 0.0
        self.seen = 0
        self.first_seen: float | None = None
        self.complete = 0
        self.total = len(keys)

    def _chunk(self, keys: Sequence[str]) -> tuple[bytes, Sequence[str]]:
        return b"".join(self.conn.pack_command("EXISTS", *keys)), keys

    def __call__(self) -> int:
        """How many of the keys exist now."""
        if not self.pending:
            return self.total
        if not self.seen and self.probe is not None and time.perf_counter() - self.last_full < self.full_every:
            self.conn.send_packed_command(self.probe)
            if not int(self.conn.read_response()):
                return 0
            self.first_seen = time.perf_counter()
        self.last_full = time.perf_counter()
        self.conn.send_packed_command([packed for packed, _ in self.pending])
        found = [int(self.conn.read_response()) for _ in self.pending]
        partial = 0
        still = []
        for (packed, keys), n in zip(self.pending, found):
            if n >= len(keys):
                self.complete += len(keys)
            else:
                partial += n
                if len(keys) > 1 and 10 * (len(keys) - n) <= len(keys):
                    step = -(-len(keys) // 10)
                    still += [self._chunk(keys[i:i + step]) for i in range(0, len(keys), step)]
                else:
                    still.append((packed, keys))
        self.pending = still
        self.seen = self.complete + partial
        if self.seen and self.first_seen is None:
            self.first_seen = time.perf_counter()
        return self.seen

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.connection_pool.release(self.conn)
            self.client.close()


class Incomplete(click.ClickException):
    """Not every task finished: ``done`` of them, the last one ``last_progress_s`` after the worker started."""

    def __init__(self, message: str, done: int, last_progress_s: float) -> None:
        super().__init__(message)
        self.done = done
        self.last_progress_s = last_progress_s


@dataclass
class Completion:
    """When a batch of tasks was seen done, relative to the worker's start."""

    first: float  # first result seen
    done: float  # all results stored (and offsets committed, for taskq)
    done_at_first: int  # results already stored at the first sighting
    cpu_at_first: float  # worker CPU seconds at the first sighting


FINE_POLL = 0.005  # s between cheap polls: a KeyCounter before the first result and near the end


def wait_for_keys(counter: Callable[[], int], total: int, worker: WorkerProcess, timeout: float,
                  on_progress: Callable[[int], None] | None = None, poll: float = 0.05,
                  then: Callable[[], bool] | None = None, stall: float | None = None) -> Completion:
    """Poll ``counter()`` until it reaches ``total`` (then until ``then()`` holds); times from worker start.

    Polls come every ``poll`` s; every FINE_POLL s while a :class:`KeyCounter` has seen nothing yet,
    once the rate so far says the rest is due within ``poll``, and while ``then()`` does not hold yet,
    so the first and the last result are timed within a few milliseconds.
    Gives up after ``timeout`` s, or once the count has not moved for ``stall`` s after the first result.
    """
    deadline = time.perf_counter() + timeout
    first = done_at_first = None
    cpu_at_first = 0.0
    last, moved = -1, time.perf_counter()
    while True:
        n = counter()
        now = time.perf_counter()
        if n != last:
            last, moved = n, now
        elif stall is not None and first is not None and n < total and now - moved > stall:
            raise Incomplete(f"stalled: {n} of {total} tasks done, none more in {stall:.0f} s", n,
                             moved - worker.started)
        if on_progress is not None:
            on_progress(n)
        if n and first is None:
            first, done_at_first, cpu_at_first = getattr(counter, "first_seen", None) or now, n, worker.cpu_seconds()
        if n >= total and (then is None or then()):
            assert first is not None and done_at_first is not None
            return Completion(first - worker.started, now - worker.started, done_at_first, cpu_at_first)
        worker.check()
        if now > deadline:
            raise Incomplete(f"only {n} of {total} tasks done after {timeout:.0f} s; "
                             f"{worker.name} log:\n{worker.log_tail()}", n, moved - worker.started)
        if first is None:
            fine = isinstance(counter, KeyCounter)
        else:
            assert done_at_first is not None
            rate = (n - done_at_first) / (now - first) if now > first else 0.0
            fine = n >= total or (rate > 0 and (total - n) / rate < poll)
        time.sleep(FINE_POLL if fine else poll)


def taskq_counter(app: Taskq, ids: Sequence[str]) -> tuple[Callable[[], int], Callable[[], None]]:
    """A cheap 'how many results are stored' check: :class:`KeyCounter` on Redis, else ``get_many``."""
    from taskq.results.redis import RESULT_PREFIX, RedisBackend

    backend = app.backend
    if isinstance(backend, RedisBackend):
        counter = KeyCounter(backend.url, [RESULT_PREFIX + i for i in ids])
        return counter, counter.close
    pending = list(ids)
    done = [0]

    def count() -> int:
        nonlocal pending
        still: list[str] = []
        for i in range(0, len(pending), 5000):
            chunk = pending[i:i + 5000]
            still += [tid for tid, rec in zip(chunk, backend.get_many(chunk)) if rec is None or not rec.ready]
        done[0] += len(pending) - len(still)
        pending = still
        return done[0]
    return count, lambda: None


def offsets_committed(app: Taskq, task_name: str) -> Callable[[], bool]:
    """True once the app's group has committed every record of the task's topic."""
    topic = app.get_task(task_name).topic

    def check() -> bool:
        return sum(app.broker.lag(app.group, topic).values()) == 0
    return check


def verify_results(app: Taskq, ids: Sequence[str]) -> tuple[int, list[Any]]:
    """(how many are not SUCCESS, the results) for ``ids``."""
    bad, values = 0, []
    for i in range(0, len(ids), 5000):
        for rec in app.backend.get_many(ids[i:i + 5000]):
            if rec is None or rec.status != "SUCCESS":
                bad += 1
            values.append(None if rec is None else rec.result)
    return bad, values


def locate_missing(app: Taskq, ids: Sequence[str], limit: int = 10, timeout: float = 30.0) -> list[str]:
    """For a run that did not finish: one line per task of ``ids`` without a final result (at most
    ``limit``), saying where its record is and what the app's group committed on that partition, so that
    a lost task (committed past, or never in a task topic) can be told from a stalled one. Best effort."""
    missing: list[str] = []
    for i in range(0, len(ids), 5000):
        chunk = ids[i:i + 5000]
        missing += [tid for tid, rec in zip(chunk, app.backend.get_many(chunk)) if rec is None or not rec.ready]
    wanted = set(missing[:limit])
    where: dict[str, tuple[str, int, int]] = {}
    broker = app.broker
    for topic in sorted({t for task in app.tasks.values() for t in task.topics}):
        if len(where) == len(wanted):
            break
        ends = {p: high for p, (low, high) in broker.watermarks(topic).items() if high > low}
        if not ends:
            continue
        reader = broker.reader(topic, {p: 0 for p in ends})
        try:
            deadline = time.monotonic() + timeout
            left = dict(ends)
            while left and time.monotonic() < deadline:
                for record in reader.read(1000, 0.5):
                    raw = record.header(H_ID)
                    if raw is not None and raw.decode(errors="replace") in wanted:
                        where[raw.decode(errors="replace")] = (record.topic, record.partition, record.offset)
                    if record.offset + 1 >= left.get(record.partition, 0):
                        left.pop(record.partition, None)
        finally:
            reader.close()
    lines = [f"{len(missing)} of {len(ids)} tasks without a final result"]
    for tid in missing[:limit]:
        if tid not in where:
            lines.append(f"  {tid}: not found in any task topic (never delivered to Kafka, or not read in time)")
            continue
        topic, partition, offset = where[tid]
        committed = broker.committed(app.group, topic).get(partition)
        verdict = "committed past it: LOST" if committed is not None and committed > offset else "not committed yet"
        lines.append(f"  {tid}: {topic}[{partition}]@{offset}, group committed {committed} ({verdict})")
    return lines


# --------------------------------------------------------------------------- progress and numbers


def make_progress(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=True)


@dataclass
class Phase:
    """A progress bar for one phase of a run (a no-op without a Progress)."""

    progress: Progress | None
    description: str
    total: float
    _id: Any = field(default=None, init=False)

    def __enter__(self) -> Self:
        if self.progress is not None:
            self._id = self.progress.add_task(self.description, total=self.total)
        return self

    def update(self, completed: float) -> None:
        if self.progress is not None:
            self.progress.update(self._id, completed=completed)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.remove_task(self._id)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_stats(samples_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {"rounds": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms) if ms else float("nan"),
            "max_ms": ms[-1] if ms else float("nan")}


def median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: median of numbers, all() of booleans; other values from the last run."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, int) for v in values):
            out[key] = statistics.median_low(values)
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = statistics.median(values)
        else:
            out[key] = values[-1]
    return out


def environment(target: Target) -> dict[str, Any]:
    from taskq import __version__

    return {"taskq": __version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "broker": target.broker,
            "backend": target.backend, "services_started_here": target.started_here}


# --------------------------------------------------------------------------- the benchmarks


def send_noops(app: Taskq, n: int, phase: Phase | None = None) -> list[str]:
    """``n`` × ``noop.delay()``; returns the task ids (not flushed)."""
    noop = app.get_task(NOOP)
    ids: list[str] = []
    step = max(1, min(1000, n // 100))
    for i in range(n):
        ids.append(noop.delay().id)
        if phase is not None and i % step == 0:
            phase.update(i)
    if phase is not None:
        phase.update(n)
    return ids


def run_enqueue(target: Target, n: int, progress: Progress | None = None, warmup: int = 100) -> dict[str, Any]:
    """``n`` × ``.delay()`` in this process, timed until ``flush()`` returns."""
    run = new_run_id()
    app = target.app(run)
    ids: list[str] = []
    try:
        prepare_topics(app, [NOOP])
        ids += send_noops(app, warmup)  # connects the producer; not timed
        app.flush()
        with Phase(progress, f"enqueue {n}", n) as phase:
            started = time.perf_counter()
            ids += send_noops(app, n, phase)
            app.flush()
            elapsed = time.perf_counter() - started
        return {"tasks": n, "seconds": elapsed, "tasks_per_s": n / elapsed}
    finally:
        cleanup(app, ids)


def e2e_numbers(n: int, worker: WorkerProcess, done: Completion, cpu: float) -> dict[str, Any]:
    wall = done.done
    steady_span = done.done - done.first
    steady_n = n - done.done_at_first
    return {
        "tasks": n,
        "seconds": wall,
        "tasks_per_s": n / wall,
        "startup_s": done.first,  # worker start until its first result was seen
        "steady_tasks_per_s": steady_n / steady_span if steady_span > 0 and steady_n > 0 else float("nan"),
        "cpu_s": cpu,
        "cpu_ms_per_task": cpu / n * 1000,
        "steady_cpu_ms_per_task": (cpu - done.cpu_at_first) / steady_n * 1000 if steady_n > 0 else float("nan"),
        "peak_rss_mb": worker.peak_rss_mb(),
    }


def run_e2e(target: Target, n: int, concurrency: int = 8, pool: str = "threads",
            progress: Progress | None = None, timeout: float = 900.0) -> dict[str, Any]:
    """Queue ``n`` no-ops, then time one worker process from its start until all are done and committed."""
    run = new_run_id()
    app = target.app(run)
    ids: list[str] = []
    try:
        prepare_topics(app, [NOOP])
        with Phase(progress, f"queue {n} (not timed)", n) as phase:
            ids = send_noops(app, n, phase)
            app.flush()
        count, close = taskq_counter(app, ids)
        worker = taskq_worker(target, run, concurrency, pool)
        try:
            with worker, Phase(progress, f"worker {pool} x{concurrency}", n) as phase:
                done = wait_for_keys(count, n, worker, timeout, phase.update,
                                     then=offsets_committed(app, NOOP))
                cpu = worker.cpu_seconds()
                numbers = e2e_numbers(n, worker, done, cpu)
        finally:
            close()
        numbers["failed"], _ = verify_results(app, ids)
        return numbers
    finally:
        cleanup(app, ids)


def measure_round_trips(round_trip: Callable[[], None], rounds: int, warmup: int, progress: Progress | None,
                        budget: float = 300.0) -> dict[str, Any]:
    """Time ``round_trip()`` ``rounds`` times after ``warmup`` untimed calls (stops early past ``budget`` s)."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    with Phase(progress, f"round trips ({warmup} warm-up)", warmup + rounds) as phase:
        for i in range(warmup + rounds):
            t0 = time.perf_counter()
            round_trip()
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
            phase.update(i + 1)
            if time.perf_counter() > deadline:
                break
    stats: dict[str, Any] = latency_stats(samples)
    if len(samples) < rounds:
        stats["note"] = f"stopped after {len(samples)} of {rounds} rounds ({budget:.0f} s budget)"
    return stats


def run_latency(target: Target, rounds: int = 1000, warmup: int = 50, concurrency: int = 8,
                pool: str = "threads", progress: Progress | None = None) -> dict[str, Any]:
    """One worker running; ``delay().get()`` one task at a time."""
    run = new_run_id()
    app = target.app(run)
    noop = app.get_task(NOOP)
    try:
        prepare_topics(app, [NOOP])
        with taskq_worker(target, run, concurrency, pool) as worker:
            with Phase(progress, "worker joining", 1):
                noop.delay().get(timeout=120)  # the worker has joined the group and runs tasks
            worker.check()
            return measure_round_trips(lambda: noop.delay().get(timeout=30), rounds, warmup, progress)
    finally:
        cleanup(app)


def check_key_order(results: Sequence[Any]) -> dict[str, Any]:
    """From ``[key, seq, started, ended]`` results: was each key's sequence run in order, one at a time?"""
    by_key: dict[str, list[tuple[int, float, float]]] = {}
    for value in results:
        if value is not None:
            key, seq, started, ended = value[:4]
            by_key.setdefault(key, []).append((seq, started, ended))
    violations, gaps = 0, []
    for runs in by_key.values():
        runs.sort()
        for (_, _, prev_end), (_, start, _) in itertools.pairwise(runs):
            if start < prev_end:
                violations += 1
            else:
                gaps.append(start - prev_end)
    starts = [v[2] for v in results if v is not None]
    ends = [v[3] for v in results if v is not None]
    return {"order_kept": violations == 0, "order_violations": violations,
            "key_handoff_ms_mean": statistics.fmean(gaps) * 1000 if gaps else float("nan"),
            "key_handoff_ms_p99": percentile(sorted(gaps), 99) * 1000 if gaps else float("nan"),
            "span_s": max(ends) - min(starts) if starts else float("nan")}


def run_llm(target: Target, n: int = 5000, keys: int = 500, seconds: float = 1.0, concurrency: int = 1000,
            pool: str = "asyncio", progress: Progress | None = None, timeout: float = 900.0,
            sdk: bool = True) -> dict[str, Any]:
    """Keyed LLM calls on an asyncio-pool worker: through the anthropic SDK to the Messages API stand-in
    answering after ``seconds`` (``sdk``), or tasks that only ``asyncio.sleep(seconds)``."""
    run = new_run_id()
    name = INFER if sdk else SLEEP
    ids: list[str] = []
    server = None
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if sdk:
            from taskq.devtools.llm_server import LLMServerProcess

            server = LLMServerProcess(latency=seconds).start()
            stack.callback(server.stop)
            # generous timeouts: on a busy machine opening hundreds of connections at once takes a while
            env = {"TASKQ_LLM_BASE_URL": server.url, "TASKQ_LLM_MAX_CONNECTIONS": str(max(concurrency, 100)),
                   "TASKQ_LLM_CONNECT_TIMEOUT": "60", "TASKQ_LLM_READ_TIMEOUT": "120"}
            # the bench app has the model task only when there is a model to call
            stack.enter_context(mock.patch.dict(os.environ, env))
        app = target.app(run)
        stack.callback(cleanup, app, ids)
        task = app.get_task(name)
        prepare_topics(app, [name])
        with Phase(progress, f"queue {n} keyed {'model calls' if sdk else 'tasks'}", n) as phase:
            for i in range(n):
                if sdk:
                    ids.append(task.delay(key=f"k{i % keys}", seq=i // keys, prompt=f"question {i}").id)
                else:
                    ids.append(task.delay(key=f"k{i % keys}", seq=i // keys, seconds=seconds).id)
                if i % 100 == 0:
                    phase.update(i)
            app.flush()
        count, close = taskq_counter(app, ids)
        worker = taskq_worker(target, run, concurrency, pool, tasks=[name], **env)
        try:
            with worker, Phase(progress, f"worker {pool} x{concurrency}", n) as phase:
                done = wait_for_keys(count, n, worker, timeout, phase.update, poll=0.1,
                                     then=offsets_committed(app, name))
                cpu = worker.cpu_seconds()
                peak = worker.peak_rss_mb()
        finally:
            close()
        failed, values = verify_results(app, ids)
        order = check_key_order(values)
        per_key = math.ceil(n / keys)
        ideal_span = max(per_key * seconds, n * seconds / concurrency)
        extra: dict[str, Any] = {}
        if server is not None:
            extra = {"via": "anthropic SDK -> stand-in", "peak_concurrent_calls": server.health()["peak_active"],
                     "output_tokens": sum(v[4] for v in values if isinstance(v, list) and len(v) > 4)}
        return {
            "tasks": n, "keys": keys, "latency_s" if sdk else "sleep_s": seconds, "seconds": done.done,
            "tasks_per_s": n / done.done, "sustained_tasks_per_s": n / order["span_s"],
            "ideal_tasks_per_s": n / ideal_span, "efficiency": ideal_span / order["span_s"], **order,
            "failed": failed, "cpu_ms_per_task": cpu / n * 1000, "peak_rss_mb": peak, **extra,
        }


def run_soak(target: Target, seconds: float = 600.0, rate: float = 1000.0, sample: float = 10.0,
             concurrency: int = 8, pool: str = "threads", progress: Progress | None = None) -> dict[str, Any]:
    """Steady load at ``rate`` tasks/s for ``seconds``; the worker's RSS every ``sample`` s."""
    run = new_run_id()
    app = target.app(run, result_expires=120.0)  # keep Redis small: results are not read back
    noop = app.get_task(NOOP)
    topic = noop.topic
    sent = 0
    try:
        prepare_topics(app, [NOOP])
        worker = taskq_worker(target, run, concurrency, pool, TASKQ_RESULT_EXPIRES="120")
        with worker:
            noop.delay().get(timeout=120)  # worker ready
            cpu0 = worker.cpu_seconds()
            samples: list[dict[str, float]] = []
            started = time.perf_counter()
            next_sample = started
            with Phase(progress, f"soak {rate:g}/s for {seconds:g} s", seconds) as phase:
                while True:
                    now = time.perf_counter()
                    elapsed = now - started
                    if now >= next_sample:
                        worker.check()
                        app.producer.poll(0)
                        lag = sum(app.broker.lag(app.group, topic).values())
                        samples.append({"t": round(elapsed, 1), "rss_mb": round(worker.rss_mb(), 1), "lag": lag})
                        next_sample += sample
                        phase.update(min(elapsed, seconds))
                    due = min(int(rate * elapsed) + 1, int(rate * seconds))
                    if elapsed >= seconds:
                        due = int(rate * seconds)
                    while sent < due:
                        noop.delay()
                        sent += 1
                    if elapsed >= seconds:
                        break
                    time.sleep(0.005)
            app.flush()
            drain_started = time.perf_counter()
            while (lag := sum(app.broker.lag(app.group, topic).values())) and time.perf_counter() - drain_started < 120:
                worker.check()
                time.sleep(0.2)
            drain = time.perf_counter() - drain_started
            cpu = worker.cpu_seconds() - cpu0
            samples.append({"t": round(time.perf_counter() - started, 1), "rss_mb": round(worker.rss_mb(), 1),
                            "lag": lag})
            peak = worker.peak_rss_mb()
        rss = [s["rss_mb"] for s in samples]
        return {
            "seconds": seconds, "rate": rate, "sent": sent, "achieved_rate": sent / seconds,
            "final_lag": lag, "drain_s": drain, "max_lag": max(s["lag"] for s in samples),
            "rss_first_mb": rss[0], "rss_last_mb": rss[-1], "rss_max_mb": max(rss), "peak_rss_mb": peak,
            "rss_growth_mb": rss[-1] - rss[0], "rss_growth_pct": (rss[-1] - rss[0]) / rss[0] * 100 if rss[0] else 0.0,
            "cpu_ms_per_task": cpu / sent * 1000 if sent else float("nan"), "samples": samples,
        }
    finally:
        cleanup(app)


# --------------------------------------------------------------------------- output

UNITS = {"seconds": "s", "tasks_per_s": "tasks/s", "steady_tasks_per_s": "tasks/s", "sustained_tasks_per_s": "tasks/s",
         "ideal_tasks_per_s": "tasks/s", "achieved_rate": "tasks/s", "rate": "tasks/s"}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _unit(key: str) -> str:
    if key in UNITS:
        return UNITS[key]
    for suffix, unit in (("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_pct", "%")):
        if key.endswith(suffix) or suffix + "_" in key:
            return unit
    return ""


def report(name: str, runs: list[dict[str, Any]], options: dict[str, Any], target: Target, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = median_of(runs)
    if as_json:
        doc = {"bench": name, "options": options, "median": summary, "runs": runs, "environment": environment(target)}
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    console = Console()
    console.print(f"[bold]taskq bench {name}[/] " + " ".join(f"{k}={v}" for k, v in options.items())
                  + f" on {target.broker} + {target.backend}"
                  + (f", median of {len(runs)} runs" if len(runs) > 1 else ", 1 run"))
    table = Table()
    table.add_column("metric")
    table.add_column("median" if len(runs) > 1 else "value", justify="right")
    table.add_column("unit")
    if len(runs) > 1:
        table.add_column("runs", justify="right")
    for key, value in summary.items():
        if key == "samples":
            continue
        row = [key, _fmt(value), _unit(key)]
        if len(runs) > 1:
            row.append("  ".join(_fmt(r.get(key)) for r in runs))
        table.add_row(*row)
    console.print(table)
    if "samples" in summary:
        console.print("RSS samples (s: MB, lag): " + ", ".join(
            f"{s['t']:g}: {s['rss_mb']:.0f} ({s['lag']})" for s in summary["samples"]))


def _execute(name: str, options: dict[str, Any], runs: int, start_services: bool, as_json: bool,
             once: Callable[[Target, Progress], dict[str, Any]]) -> None:
    from rich.console import Console

    err = Console(stderr=True)
    with services(start_services, err) as target:
        results = []
        with make_progress(err) as progress:
            overall = progress.add_task(f"{name}: run 1/{runs}", total=runs)
            for i in range(runs):
                progress.update(overall, description=f"{name}: run {i + 1}/{runs}")
                results.append(once(target, progress))
                progress.advance(overall)
        report(name, results, options, target, as_json)


# --------------------------------------------------------------------------- CLI


def _common(tasks: int | None, concurrency: int | None, pool: str | None) -> Callable[[Callable[..., Any]], Any]:
    from taskq.pools import POOLS

    def decorate(fn: Callable[..., Any]) -> Any:
        fn = click.option("--start-services", is_flag=True,
                          help="Start a Kafka and a Redis here (scripts/services.py), stop them at the end.")(fn)
        fn = click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")(fn)
        fn = click.option("--runs", default=3, show_default=True, help="Repetitions; the median is reported.")(fn)
        if pool is not None:
            fn = click.option("--pool", type=click.Choice(sorted(POOLS)), default=pool, show_default=True,
                              help="Worker pool.")(fn)
        if concurrency is not None:
            fn = click.option("-c", "--concurrency", default=concurrency, show_default=True,
                              help="Worker concurrency.")(fn)
        if tasks is not None:
            fn = click.option("-n", "--tasks", default=tasks, show_default=True, help="Tasks per run.")(fn)
        return fn
    return decorate


@click.group()
def bench() -> None:
    """Benchmarks on the configured Kafka and Redis (or --start-services)."""


@bench.command()
@_common(20000, None, None)
def enqueue(tasks: int, runs: int, as_json: bool, start_services: bool) -> None:
    """Producer throughput: n x .delay() of a no-op, timed until flush() (all acknowledged)."""
    _execute("enqueue", {"tasks": tasks}, runs, start_services, as_json,
             lambda target, progress: run_enqueue(target, tasks, progress))


@bench.command()
@_common(20000, 8, "threads")
def e2e(tasks: int, concurrency: int, pool: str, runs: int, as_json: bool, start_services: bool) -> None:
    """Worker throughput: n queued no-ops, one worker process, until all stored and committed."""
    _execute("e2e", {"tasks": tasks, "concurrency": concurrency, "pool": pool}, runs, start_services, as_json,
             lambda target, progress: run_e2e(target, tasks, concurrency, pool, progress))


@bench.command()
@_common(1000, 8, "threads")
@click.option("--warmup", default=50, show_default=True, help="Untimed round trips first.")
def latency(tasks: int, concurrency: int, pool: str, warmup: int, runs: int, as_json: bool,
            start_services: bool) -> None:
    """Round-trip latency: one worker, delay().get() one task at a time (-n round trips)."""
    _execute("latency", {"rounds": tasks, "warmup": warmup, "concurrency": concurrency, "pool": pool}, runs,
             start_services, as_json,
             lambda target, progress: run_latency(target, tasks, warmup, concurrency, pool, progress))


@bench.command()
@_common(5000, 1000, "asyncio")
@click.option("--keys", default=500, show_default=True, help="Distinct message keys (per-key order is checked).")
@click.option("--latency", "--sleep", "seconds", default=1.0, show_default=True,
              help="Seconds the stand-in takes to answer (with --sleep-only: seconds each task awaits).")
@click.option("--sleep-only", is_flag=True, help="Tasks that only await asyncio.sleep, no SDK and no HTTP.")
def llm(tasks: int, concurrency: int, pool: str, keys: int, seconds: float, sleep_only: bool, runs: int,
        as_json: bool, start_services: bool) -> None:
    """LLM load: keyed model calls through the anthropic SDK to the local Messages API stand-in
    (pip install -e '.[llm]'), on an asyncio-pool worker; per-key order is checked."""
    _execute("llm", {"tasks": tasks, "keys": keys, "latency": seconds, "concurrency": concurrency, "pool": pool,
                     "via": "sleep" if sleep_only else "sdk"},
             runs, start_services, as_json,
             lambda target, progress: run_llm(target, tasks, keys, seconds, concurrency, pool, progress,
                                              sdk=not sleep_only))


@bench.command()
@_common(None, 8, "threads")
@click.option("--seconds", default=600.0, show_default=True, help="How long to keep the load on.")
@click.option("--rate", default=1000.0, show_default=True, help="Tasks sent per second.")
@click.option("--sample", default=10.0, show_default=True, help="Seconds between RSS samples.")
def soak(concurrency: int, pool: str, seconds: float, rate: float, sample: float, runs: int, as_json: bool,
         start_services: bool) -> None:
    """Memory under steady load: the worker's RSS every --sample s (--runs defaults to 1 here)."""
    source = click.get_current_context().get_parameter_source("runs")
    runs = 1 if source is None or source.name == "DEFAULT" else runs
    _execute("soak", {"seconds": seconds, "rate": rate, "sample": sample, "concurrency": concurrency,
                      "pool": pool}, runs, start_services, as_json,
             lambda target, progress: run_soak(target, seconds, rate, sample, concurrency, pool, progress))


@bench.command()
@_common(None, 8, "threads")
@click.option("--rate", default=500.0, show_default=True, help="Tasks sent per second.")
@click.option("--keys", default=200, show_default=True, help="Distinct keys (per-key order is checked).")
@click.option("--settle", default=4.0, show_default=True,
              help="Seconds of load on the two workers (once both run tasks) before the join.")
@click.option("--hold", default=8.0, show_default=True, help="Seconds from the join to the leave, and after it.")
@click.option("--window", default=3.0, show_default=True,
              help="Seconds after the joiner's first (leaver's last) result that count as around the change.")
@click.option("--protocol", type=click.Choice(["classic", "consumer", "both"]), default="both", show_default=True,
              help="Consumer group protocol: classic (cooperative-sticky) or consumer (KIP-848).")
def rebalance(concurrency: int, pool: str, rate: float, keys: int, settle: float, hold: float, window: float,
              protocol: str, runs: int, as_json: bool, start_services: bool) -> None:
    """Rebalance stall: two workers under load, a third joins, the first leaves (SIGTERM); the longest
    gap between completions on the other workers around each change (benchmarks/rebalance.py)."""
    from benchmarks.rebalance import run_rebalance

    for proto in ("classic", "consumer") if protocol == "both" else (protocol,):
        _execute("rebalance", {"protocol": proto, "rate": rate, "keys": keys, "concurrency": concurrency,
                               "pool": pool}, runs, start_services, as_json,
                 lambda target, progress, proto=proto: run_rebalance(  # type: ignore[misc]
                     target, rate, keys, settle, hold, window, concurrency, pool, proto, progress))


from benchmarks.embed import embed_command  # noqa: E402 - `taskq bench embed` (needs the rag extra)

bench.add_command(embed_command)

from benchmarks.growth import growth_command  # noqa: E402 - `taskq bench growth`

bench.add_command(growth_command)
