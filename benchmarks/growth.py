"""``taskq bench growth``: how the worker's cost grows with task types, payload size and distinct keys.

Three measurements, each side by side in one run (``--runs`` times, medians reported):

``types``
    for 1, 10, 100 and 200 task types (each its own topic; the worker creates their dead-letter topics
    and the group's delay tiers, as the app does), ``--tasks`` no-ops spread evenly over the types are
    queued (the first send of each type creates its topic: timed as ``send_setup_s``); then one worker
    process is started: ``cold_start_s`` is its start until the first result (it creates the dead-letter
    topics), ``tasks_per_s`` the rate from then until the last result, ``peak_rss_mb`` its peak RSS. A
    second worker is then started on the existing topics with one task of each type waiting:
    ``start_s`` is its start until the first result.
``payload``
    ``--docs`` tasks carrying a document of 100 KB (text like a RAG chunk store's: words, so it
    compresses as text does), and ``--tasks`` of 1 KB: enqueue MB/s (timed until every message is
    acknowledged), worker MB/s (first to last result) and the worker's peak RSS.
``keys`` (and ``keys-worker``)
    one million distinct keys through :class:`~taskq.worker.dispatch.KeyedDispatcher`, driven in this
    process (no Kafka): a pool stand-in runs what is submitted and releases it, at most a prefetch's
    worth in flight, as the worker does. RSS and the dispatcher's key count are sampled along the way.
    ``keys-worker``: as many no-op tasks, each its own key (an unkeyed task is keyed by its id), through
    one worker process on Kafka; its RSS each tenth of the way.

The worker processes load ``benchmarks.growth:growth_app``, which registers ``TASKQ_BENCH_TYPES`` task
types (and the document task when ``TASKQ_BENCH_DOC=1``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from taskq.app import Taskq
try:
    from taskq.topics import DLQ_PARTITIONS
except ImportError:  # a taskq from before dead letters had one partition (measuring it side by side)
    DLQ_PARTITIONS = 6

if TYPE_CHECKING:
    from rich.progress import Progress

    from benchmarks.bench import Target, WorkerProcess

# benchmarks.bench adds this module's command to `taskq bench`: its helpers are imported where used

GROWTH_APP = "benchmarks.growth:growth_app"
DOC = "growth.doc"
TYPE_COUNTS = (1, 10, 100, 200)
KB = 1024
MB = 1024 * 1024


def type_name(i: int) -> str:
    return f"growth.t{i:03d}"


def make_growth_app(types: int, doc: bool = False, broker: str | None = None, backend: str | None = None,
                    **settings: Any) -> Taskq:
    """An app with ``types`` no-op task types (``growth.t000``...) and, with ``doc``, the document task."""
    app = Taskq("bench-growth", broker=broker, backend=backend, **settings)

    def noop() -> None:
        return None

    for i in range(types):
        app.task(name=type_name(i))(noop)
    if doc:
        @app.task(name=DOC)
        def doc_length(text: str, seconds: float = 0.0) -> int:
            if seconds:
                time.sleep(seconds)  # a slow consumer (an embedding model): records wait in the worker
            return len(text)
    return app


def __getattr__(name: str) -> Any:
    """``growth_app`` (what the benchmark's worker processes load) is built on first use from the environment."""
    if name == "growth_app":
        app = make_growth_app(int(os.environ.get("TASKQ_BENCH_TYPES", "0")),
                              os.environ.get("TASKQ_BENCH_DOC") == "1")
        globals()["growth_app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def growth_worker(target: Target, run: str, types: int = 0, doc: bool = False, concurrency: int = 8,
                  **env: str) -> WorkerProcess:
    """``taskq worker`` on every task of ``growth_app`` with ``types`` types (and the document task)."""
    from benchmarks.bench import WorkerProcess

    argv = [sys.executable, "-m", "taskq.cli", "worker", "-A", GROWTH_APP, "-c", str(concurrency)]
    return WorkerProcess(argv, target.worker_env(run, TASKQ_BENCH_TYPES=str(types),
                                                 TASKQ_BENCH_DOC="1" if doc else "0", **env),
                         name=f"growth-worker-{types}")


# --------------------------------------------------------------------------- task types


def settle(app: Taskq) -> None:
    """Wait until the broker has applied every earlier topic change (a previous run's deletions, the
    last creations): a new probe topic shows in its metadata only after them. Not timed."""
    broker = app.broker
    admin = getattr(broker, "admin", None)
    if admin is None:
        return
    from taskq.errors import BrokerError

    probe = f"{app.settings.topic_prefix}settle.{time.time_ns()}"
    for attempt in range(6):  # up to a minute: deleting a previous run's 2,400 partitions takes a while
        try:
            broker.ensure_topics({probe: 1})
            break
        except BrokerError:
            if attempt == 5:
                raise
    for future in admin.delete_topics([probe], operation_timeout=30).values():
        future.result()


def run_types(target: Target, types: int, tasks: int, concurrency: int = 8, progress: Progress | None = None,
              timeout: float = 600.0) -> dict[str, Any]:
    """One worker on ``types`` task types: start-up (cold and on existing topics), throughput, RSS."""
    from benchmarks.bench import (Completion, Incomplete, Phase, cleanup, locate_missing, new_run_id, run_settings,
                                  taskq_counter, verify_results, wait_for_keys)

    run = new_run_id()
    app = make_growth_app(types, False, target.broker, target.backend, **run_settings(run))
    handles = [app.get_task(type_name(i)) for i in range(types)]
    ids: list[str] = []
    try:
        settle(app)
        started = time.perf_counter()
        ids += [h.delay().id for h in handles]  # the first send of each type creates its topic
        app.flush()
        send_setup = time.perf_counter() - started
        with Phase(progress, f"{types} types: queue {tasks}", tasks) as phase:
            for i in range(tasks - types):
                ids.append(handles[i % types].delay().id)
                if i % 1000 == 0:
                    phase.update(i)
            app.flush()
        count, close = taskq_counter(app, ids)
        settle(app)
        start_error = ""
        try:
            worker = growth_worker(target, run, types, concurrency=concurrency)
            with worker, Phase(progress, f"{types} types: worker", len(ids)) as phase:
                try:
                    done = wait_for_keys(count, len(ids), worker, timeout, phase.update, stall=60)
                except click.ClickException as exc:  # the worker gave up starting: reported, not fatal
                    if not isinstance(exc, Incomplete) and "exited" in exc.message:
                        start_error = exc.message.strip().splitlines()[-1][:200]
                    else:
                        if isinstance(exc, Incomplete):  # lost or stalled: which tasks, and where
                            with contextlib.suppress(Exception):
                                exc.message += "\n" + "\n".join(locate_missing(app, ids))  # type: ignore[misc]
                        raise
                peak = worker.peak_rss_mb()
        finally:
            close()
        if start_error:  # the restart below finishes the tasks
            done = Completion(float("nan"), float("nan"), 0, 0.0)
        failed, _ = verify_results(app, ids) if not start_error else (0, [])
        # a restart: every topic exists, one task of each type waits
        again = [h.delay().id for h in handles]
        app.flush()
        count, close = taskq_counter(app, ids + again if start_error else again)
        try:
            with growth_worker(target, run, types, concurrency=concurrency) as worker2:
                warm = wait_for_keys(count, len(ids) + len(again) if start_error else len(again), worker2, timeout,
                                     stall=60)
                rss2 = worker2.peak_rss_mb()
        finally:
            close()
        ids += again
        steady = (len(ids) - len(again) - done.done_at_first) / (done.done - done.first) \
            if done.done > done.first else float("nan")
        return {"types": types, "topics": 2 * types + len(app.delay_topics),
                "send_setup_s": send_setup, "cold_start_s": done.first, "start_s": warm.first,
                "all_types_done_s": warm.done, "tasks_per_s": steady, "peak_rss_mb": peak,
                "restart_peak_rss_mb": rss2, "failed": failed, "start_error": start_error}
    finally:
        cleanup(app, ids)


# --------------------------------------------------------------------------- payloads


def document(size: int, rng: random.Random, vocabulary: Sequence[str]) -> str:
    """``size`` characters of words (compresses about as English text does)."""
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(vocabulary)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def make_vocabulary(rng: random.Random, words: int = 20000) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9,
               1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]
    return ["".join(rng.choices(letters, weights, k=max(1, int(rng.expovariate(1 / 5))))) for _ in range(words)]


def run_payload(target: Target, size: int, n: int, concurrency: int = 8, progress: Progress | None = None,
                producer_options: dict[str, Any] | None = None, timeout: float = 600.0,
                seconds: float = 0.0) -> dict[str, Any]:
    """``n`` documents of ``size`` bytes (each task sleeping ``seconds``): enqueue MB/s, worker MB/s, worker
    peak RSS."""
    from benchmarks.bench import Phase, cleanup, new_run_id, run_settings, taskq_counter, verify_results, wait_for_keys

    run = new_run_id()
    settings: dict[str, Any] = dict(run_settings(run))
    extra_env: dict[str, str] = {}
    if producer_options:
        settings["producer_options"] = producer_options
        extra_env["TASKQ_PRODUCER_OPTIONS"] = ",".join(f"{k}={v}" for k, v in producer_options.items())
    app = make_growth_app(0, True, target.broker, target.backend, **settings)
    task = app.get_task(DOC)
    rng = random.Random(size)
    vocabulary = make_vocabulary(rng)
    docs = [document(size, rng, vocabulary) for _ in range(min(n, 50))]
    ids: list[str] = []
    try:
        app.ensure_topics({task.topic: task.partitions, app.dlq_topic(task.topic): DLQ_PARTITIONS})
        app.ensure_topics({t: app.settings.default_partitions for t in app.delay_topics})
        ids += [task.delay(docs[0]).id for _ in range(10)]  # connects the producer; not timed
        app.flush()
        with Phase(progress, f"enqueue {n} x {size // KB} KB", n) as phase:
            started = time.perf_counter()
            for i in range(n):
                ids.append(task.delay(docs[i % len(docs)], seconds=seconds).id)
                if i % 100 == 0:
                    phase.update(i)
            app.flush()
            enqueue_s = time.perf_counter() - started
        total = len(ids)
        count, close = taskq_counter(app, ids)
        try:
            worker = growth_worker(target, run, 0, True, concurrency, **extra_env)
            with worker, Phase(progress, f"worker {size // KB} KB", total) as phase:
                done = wait_for_keys(count, total, worker, timeout, phase.update, stall=60)
                peak = worker.peak_rss_mb()
        finally:
            close()
        failed, _ = verify_results(app, ids)
        steady_n = total - done.done_at_first
        span = done.done - done.first
        return {"size_kb": size / KB, "tasks": n, "task_sleep_ms": seconds * 1000,
                "enqueue_mb_per_s": n * size / MB / enqueue_s, "enqueue_tasks_per_s": n / enqueue_s,
                "worker_mb_per_s": steady_n * size / MB / span if span > 0 else float("nan"),
                "worker_tasks_per_s": steady_n / span if span > 0 else float("nan"),
                "worker_wall_s": done.done, "peak_rss_mb": peak, "failed": failed}
    finally:
        cleanup(app, ids)


# --------------------------------------------------------------------------- distinct keys


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_keys(keys: int = 1_000_000, in_flight: int = 4000, samples: int = 10) -> dict[str, Any]:
    """``keys`` distinct keys through a KeyedDispatcher in this process, ``in_flight`` at most unfinished.

    Each record is submitted (its key idle), then released once ``in_flight`` newer ones are out, as
    the finisher releases records; a key's second record (every 10th key) waits behind its first.
    """
    from taskq.brokers.base import Record
    from taskq.worker.dispatch import KeyedDispatcher

    running: deque[Record] = deque()
    dispatcher = KeyedDispatcher(running.append)
    gc.collect()
    before = rss_mb()
    points: list[tuple[int, float, int]] = []
    step = max(1, keys // samples)
    started = time.perf_counter()
    for i in range(keys):
        key = f"key-{i}".encode()
        dispatcher.dispatch(Record("t", i % 6, i, key, b"", [], 0))
        if i % 10 == 0:
            dispatcher.dispatch(Record("t", i % 6, i, key, b"", [], 0))  # waits behind the first
        while len(running) > in_flight:
            dispatcher.release(running.popleft())
        if (i + 1) % step == 0:
            points.append((i + 1, rss_mb(), len(dispatcher)))
    while running:
        dispatcher.release(running.popleft())
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_mb()
    first = points[0][1] if points else before
    return {"keys": keys, "in_flight": in_flight, "rss_before_mb": before, "rss_at_first_sample_mb": first,
            "rss_after_mb": after, "rss_growth_after_first_sample_mb": max(p[1] for p in points) - first,
            "max_keys_held": max(p[2] for p in points), "keys_held_at_end": len(dispatcher),
            "keys_per_s": keys / elapsed, "samples": points}


def run_keys_worker(target: Target, n: int, concurrency: int = 8, progress: Progress | None = None,
                    samples: int = 10, timeout: float = 1800.0) -> dict[str, Any]:
    """``n`` no-op tasks, each its own key (an unkeyed task's key is its id), through one worker process on
    Kafka: its RSS each time another ``n / samples`` are done."""
    from benchmarks.bench import Phase, cleanup, new_run_id, run_settings, taskq_counter

    run = new_run_id()
    app = make_growth_app(1, False, target.broker, target.backend, **run_settings(run))
    handle = app.get_task(type_name(0))
    ids: list[str] = []
    try:
        with Phase(progress, f"queue {n} (each its own key)", n) as phase:
            for i in range(n):
                ids.append(handle.delay().id)
                if i % 10000 == 0:
                    phase.update(i)
            app.flush()
        count, close = taskq_counter(app, ids)
        points: list[tuple[int, float]] = []
        try:
            with growth_worker(target, run, 1, concurrency=concurrency) as worker, \
                    Phase(progress, "worker", n) as phase:
                deadline = time.perf_counter() + timeout
                done = 0
                while done < n and time.perf_counter() < deadline:
                    worker.check()
                    done = count()
                    phase.update(done)
                    if done >= (len(points) + 1) * n // samples:
                        points.append((done, worker.rss_mb()))
                    time.sleep(0.2)
                elapsed = time.perf_counter() - worker.started
                peak = worker.peak_rss_mb()
        finally:
            close()
        rss = [mb for _, mb in points]
        first = rss[0] if rss else float("nan")
        return {"keys": n, "done": done, "rss_at_first_sample_mb": first,
                "rss_last_mb": rss[-1] if rss else float("nan"),
                "rss_growth_after_first_sample_mb": max(rss) - first if rss else float("nan"),
                "peak_rss_mb": peak, "tasks_per_s": done / elapsed, "samples": points}
    finally:
        cleanup(app, ids)


# --------------------------------------------------------------------------- side by side


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Row by row, the median of each number over the runs."""
    out = []
    for rows in zip(*runs):
        row: dict[str, Any] = {}
        for key in rows[0]:  # (start_error and compression are text: the last run's)
            values = [r[key] for r in rows]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            row[key] = statistics.median(numbers) if len(numbers) == len(values) else values[-1]
            if len(rows) > 1 and len(numbers) == len(values) and key not in ("types", "size_kb", "tasks", "topics"):
                row[key + "_runs"] = values
        out.append(row)
    return out


def print_rows(title: str, rows: list[dict[str, Any]], ratio_to: str | None = None) -> None:
    """One line per metric, one column per row (ratios to the first column where ``ratio_to`` is given)."""
    from rich.console import Console
    from rich.table import Table

    from benchmarks.bench import _fmt

    table = Table(title=title)
    table.add_column("metric")
    for row in rows:
        table.add_column(_fmt(row.get(ratio_to, "")) if ratio_to else "value", justify="right")
    for key in (k for k in rows[0] if not k.endswith("_runs") and k != ratio_to):
        cells = []
        for row in rows:
            text = _fmt(row.get(key))
            base = rows[0].get(key)
            if ratio_to and row is not rows[0] and isinstance(row.get(key), float) and isinstance(base, float) \
                    and base and row[key] == row[key]:  # (nan != nan: no ratio)
                text += f" (x{row[key] / base:.2f})"
            cells.append(text)
        table.add_row(key, *cells)
    Console().print(table)


@click.command("growth")
@click.option("--what", type=click.Choice(["types", "payload", "keys", "keys-worker", "all"]), default="all",
              show_default=True, help="keys-worker: --keys tasks through a worker on Kafka (not in all).")
@click.option("--types", "type_counts", default=",".join(map(str, TYPE_COUNTS)), show_default=True,
              help="Task type counts, comma separated.")
@click.option("-n", "--tasks", default=20000, show_default=True, help="No-op tasks per type count; 1 KB documents.")
@click.option("--docs", default=2000, show_default=True, help="100 KB documents.")
@click.option("--keys", default=1_000_000, show_default=True, help="Distinct keys through the dispatcher.")
@click.option("--compression", default="", help="Also run the payloads with this producer compression.type.")
@click.option("-c", "--concurrency", default=8, show_default=True, help="Worker concurrency (threads).")
@click.option("--runs", default=3, show_default=True, help="Repetitions; medians are reported.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--start-services", is_flag=True,
              help="Start a Kafka and a Redis here (scripts/services.py), stop them at the end.")
def growth_command(what: str, type_counts: str, tasks: int, docs: int, keys: int, compression: str,
                   concurrency: int, runs: int, as_json: bool, start_services: bool) -> None:
    """How cost grows: start-up, RSS and throughput with 1-200 task types; MB/s with 100 KB payloads;
    dispatcher memory over a million distinct keys."""
    import json

    from rich.console import Console

    from benchmarks.bench import environment, make_progress, services

    err = Console(stderr=True)
    counts = [int(c) for c in type_counts.split(",") if c.strip()]
    out: dict[str, Any] = {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if what in ("keys", "all"):
        err.print(f"[dim]{keys:,} distinct keys through the dispatcher (in process) ...[/]")
        out["keys"] = run_keys(keys)
    if what in ("types", "payload", "keys-worker", "all"):
        with services(start_services, err) as target, make_progress(err) as progress:
            out["environment"] = environment(target)
            if what == "keys-worker":
                out["keys_worker"] = run_keys_worker(target, keys, concurrency, progress)
            if what in ("types", "all"):
                # interleaved: every run measures each type count once, so load drifts hit all alike
                out["types"] = median_rows([[run_types(target, c, tasks, concurrency, progress) for c in counts]
                                            for _ in range(runs)])
            if what in ("payload", "all"):
                variants: list[tuple[int, int, dict[str, Any] | None, float]] = [
                    (KB, tasks, None, 0.0), (100 * KB, docs, None, 0.0),
                    (100 * KB, 2 * docs, None, 0.01)]  # a slow task: documents wait in the worker
                if compression:
                    variants += [(KB, tasks, {"compression.type": compression}, 0.0),
                                 (100 * KB, docs, {"compression.type": compression}, 0.0)]
                per_run = []
                for _ in range(runs):
                    rows = []
                    for size, n, opts, seconds in variants:
                        row = run_payload(target, size, n, concurrency, progress, opts, seconds=seconds)
                        row["compression"] = (opts or {}).get("compression.type", "none")
                        rows.append(row)
                    per_run.append(rows)
                out["payload"] = median_rows(per_run)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    if "keys" in out:
        k = {key: v for key, v in out["keys"].items() if key != "samples"}
        print_rows("dispatcher, distinct keys (in process)", [k])
    if "keys_worker" in out:
        print_rows("distinct keys through a worker on Kafka",
                   [{k: v for k, v in out["keys_worker"].items() if k != "samples"}])
    if "types" in out:
        print_rows(f"task types (median of {runs})", out["types"], ratio_to="types")
    if "payload" in out:
        for row in out["payload"]:
            row["variant"] = (f"{row['size_kb']:g} KB, {row['compression']}"
                              + (f", {row['task_sleep_ms']:g} ms task" if row["task_sleep_ms"] else ""))
        print_rows(f"payloads (median of {runs})", out["payload"], ratio_to="variant")
    click.echo(f"load average at start {out['loadavg_start']}, at end {out['loadavg_end']} "
               f"({os.cpu_count()} cores)")
