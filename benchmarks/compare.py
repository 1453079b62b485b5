#!/usr/bin/env python3
"""taskq against Celery and Dramatiq, in one run, on the same Kafka and Redis.

For every framework, on one worker process each:

* **enqueue**: ``-n`` no-op tasks sent from this process, timed until the broker has them all
  (taskq: ``app.flush()`` returns, i.e. Kafka acknowledged every message with ``acks=all``;
  Celery and Dramatiq on Redis: the last ``LPUSH``/Lua call returned; kombu's Kafka transport
  flushes after every message);
* **e2e**: then one worker process is started and timed until every one of those results is in
  Redis (taskq: and the offsets are committed). Also its CPU per task and peak RSS (``/proc``);
* **latency**: with that worker now idle, ``--rounds`` round trips ``send -> result`` one at a
  time after ``--warmup``; p50/p99;
* **first result**: one task waiting, a fresh worker process started, timed until its result is in
  Redis (median of ``--starts``);
* **one-shot script**: a new interpreter that imports the framework and the app, sends one task,
  waits for the broker to take it and exits, wall time (median of ``--starts``).

Frameworks (peer apps in ``benchmarks/peers/``):

``taskq``          Kafka + Redis results, ``taskq worker --pool threads -c 8``
``celery-redis``   Celery 5, Redis broker + Redis results, ``--pool threads -c 8`` and
                   ``--pool prefork -c 2`` (both measured; the faster e2e one is used for Kafka)
``celery-kafka``   Celery 5 on kombu's ``confluentkafka://`` transport to the same Kafka
``dramatiq``       Dramatiq, Redis broker + Redis results middleware, 1 process x 8 threads

Services: ``TASKQ_BROKER_URL``/``TASKQ_RESULT_BACKEND`` when both are set, else one Kafka node and
one Redis started here with ``scripts/services.py`` (stopped at the end). Peers need
``pip install -e '.[bench]'``.

    python benchmarks/compare.py                  # 20,000 tasks, 1,000 round trips
    python benchmarks/compare.py -n 2000 --rounds 200 --only taskq,dramatiq
    python benchmarks/compare.py --json > compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks import bench
from taskq.results.redis import RESULT_PREFIX

FRAMEWORKS = ("taskq", "taskq-low-latency", "celery-redis", "celery-kafka", "dramatiq")


class Budget(Exception):
    """A phase did not finish within its time budget."""


# --------------------------------------------------------------------------- clients


class TaskqClient:
    """taskq seen through the same small interface as the peer modules."""

    label = "taskq"

    def __init__(self, target: bench.Target, concurrency: int = 8, pool: str = "threads",
                 linger_ms: int | None = None) -> None:
        self.target = target
        self.run = bench.new_run_id()
        options = {} if linger_ms is None else {"producer_options": {"linger.ms": linger_ms}}
        self.app = target.app(self.run, **options)
        if linger_ms is not None:
            self.label = f"taskq linger.ms={linger_ms}"
        bench.prepare_topics(self.app, [bench.NOOP])  # topic creation is an admin step, not timed
        self.noop = self.app.get_task(bench.NOOP)
        self.concurrency = concurrency
        self.pool = pool
        self.ids: list[str] = []
        self.config = f"Kafka + Redis results, worker --pool {pool} -c {concurrency}" + (
            f", producer linger.ms={linger_ms} (the low-latency setting)" if linger_ms is not None else "")

    def worker(self) -> bench.WorkerProcess:
        return bench.taskq_worker(self.target, self.run, self.concurrency, self.pool)

    def send(self) -> str:
        task_id = self.noop.delay().id
        self.ids.append(task_id)
        return RESULT_PREFIX + task_id

    def flush(self) -> None:
        self.app.flush()

    def round_trip(self, timeout: float) -> None:
        self.noop.delay().get(timeout=timeout)

    def finished(self) -> Callable[[], bool] | None:
        return bench.offsets_committed(self.app, bench.NOOP)

    def oneshot(self) -> tuple[list[str], dict[str, str]]:
        """A user's script that sends one task (settings from TASKQ_* variables, as a deployment has)."""
        code = ("from taskq import Taskq\n"
                "app = Taskq('oneshot')\n"
                f"@app.task(name={bench.NOOP!r})\n"
                "def noop() -> None: ...\n"
                "noop.delay()\n"
                "app.flush()\n")
        return [sys.executable, "-c", code], self.target.worker_env(self.run)

    def close(self) -> None:
        bench.cleanup(self.app, self.ids)


class PeerClient:
    """A module of ``benchmarks/peers`` configured for one run through ``BENCH_*`` variables."""

    def __init__(self, label: str, module: str, broker: str, backend: str, concurrency: int, pool: str,
                 config: str) -> None:
        self.label = label
        self.queue = f"bench-{uuid.uuid4().hex[:10]}"
        self.env = {"BENCH_BROKER_URL": broker, "BENCH_BACKEND_URL": backend, "BENCH_QUEUE": self.queue}
        os.environ.update(self.env)  # the module reads them at import; the worker gets them too
        name = f"benchmarks.peers.{module}"
        self.module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
        self.concurrency = concurrency
        self.pool = pool
        self.config = config

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    PYTHONUNBUFFERED="1", **self.env)

    def worker(self) -> bench.WorkerProcess:
        return bench.WorkerProcess(self.module.worker_argv(self.concurrency, self.pool), self._env(),
                                   name=f"{self.label} worker", cwd=str(REPO))

    def oneshot(self) -> tuple[list[str], dict[str, str]]:
        """The peer module imported by a new interpreter, one task sent and flushed."""
        code = f"import {self.module.__name__} as m\nm.send()\nm.flush()\n"
        return [sys.executable, "-c", code], self._env()

    def send(self) -> str:
        return self.module.send()

    def flush(self) -> None:
        self.module.flush()

    def round_trip(self, timeout: float) -> None:
        self.module.round_trip(timeout)

    def finished(self) -> Callable[[], bool] | None:
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.module.close()


# --------------------------------------------------------------------------- one framework


def measure(client: Any, backend_url: str, n: int, rounds: int, warmup: int, budget: float,
            latency_budget: float, progress: Progress, enqueue_warmup: int = 100,
            stall: float = 60.0) -> dict[str, Any]:
    """enqueue, e2e and latency for one client (one worker process)."""
    out: dict[str, Any] = {"framework": client.label, "config": client.config, "tasks": n,
                           "loadavg_before": round(os.getloadavg()[0], 2)}
    notes: list[str] = []
    keys = [client.send() for _ in range(enqueue_warmup)]  # connections, producer ids: not timed
    client.flush()
    with bench.Phase(progress, f"{client.label}: enqueue {n}", n) as phase:
        started = time.perf_counter()
        deadline = started + budget
        sent = 0
        for i in range(n):
            keys.append(client.send())
            sent += 1
            if i % 200 == 0:
                phase.update(i)
                if time.perf_counter() > deadline:
                    notes.append(f"enqueue stopped after {sent} of {n} tasks ({budget:.0f} s budget)")
                    break
        client.flush()
        elapsed = time.perf_counter() - started
    out.update(enqueue_tasks=sent, enqueue_s=elapsed, enqueue_per_s=sent / elapsed)

    counter = bench.KeyCounter(backend_url, keys)
    worker = client.worker()
    total = len(keys)
    try:
        with worker, bench.Phase(progress, f"{client.label}: e2e, one worker", total) as phase:
            try:
                done = bench.wait_for_keys(counter, total, worker, budget, phase.update,
                                           then=client.finished(), stall=stall)
                cpu = worker.cpu_seconds()
                e2e = bench.e2e_numbers(total, worker, done, cpu)
                out.update({"e2e_" + k: v for k, v in e2e.items() if k != "tasks"})
                out["e2e_tasks"] = total
            except Exception as exc:  # noqa: BLE001 - a budget overrun or a dead worker is a result too
                finished = counter()
                elapsed = time.perf_counter() - worker.started
                if isinstance(exc, bench.Incomplete) and exc.done:  # the rate up to the last progress
                    finished, elapsed = exc.done, exc.last_progress_s
                worker_alive = worker.proc is not None and worker.proc.poll() is None
                notes.append(f"e2e incomplete: {finished} of {total} results, the last {elapsed:.1f} s after the "
                             f"worker started" + (f" ({str(exc).splitlines()[0]})" if worker_alive
                                                  else f"; worker exited: {str(exc)[-1500:]}")
                             + "; e2e tasks/s counts those; latency not measured (tasks still queued)")
                out.update(e2e_tasks=finished, e2e_seconds=elapsed, e2e_tasks_per_s=finished / elapsed,
                           e2e_cpu_ms_per_task=worker.cpu_seconds() / max(finished, 1) * 1000 if worker_alive
                           else float("nan"), e2e_peak_rss_mb=worker.peak_rss_mb() if worker_alive else float("nan"))
                out["notes"] = notes
                return out
            lat = bench.measure_round_trips(lambda: client.round_trip(30.0), rounds, warmup, progress,
                                            budget=latency_budget)
            if "note" in lat:
                notes.append("latency " + lat.pop("note"))
            out.update({"latency_" + k: v for k, v in lat.items()})
    finally:
        counter.close()
    if notes:
        out["notes"] = notes
    return out


def measure_starts(client: Any, backend_url: str, starts: int, progress: Progress,
                   timeout: float = 60.0) -> dict[str, Any]:
    """Worker start to first result with one task waiting, and the one-shot script; medians."""
    first: list[float] = []
    with bench.Phase(progress, f"{client.label}: start to first result", starts) as phase:
        for i in range(starts):
            key = client.send()
            client.flush()
            counter = bench.KeyCounter(backend_url, [key])
            try:
                with client.worker() as worker:
                    while counter() < 1:
                        worker.check()
                        if time.perf_counter() - worker.started > timeout:
                            raise Budget(f"no first result within {timeout:g} s")
                        time.sleep(0.002)
                    first.append(time.perf_counter() - worker.started)
            finally:
                counter.close()
            phase.update(i + 1)
    walls: list[float] = []
    argv, env = client.oneshot()
    with bench.Phase(progress, f"{client.label}: one-shot script", starts) as phase:
        for i in range(starts):
            t0 = time.perf_counter()
            done = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
            walls.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"the one-shot script failed: {done.stderr[-2000:]}")
            phase.update(i + 1)
    return {"first_result_s": statistics.median(first), "oneshot_s": statistics.median(walls)}


# --------------------------------------------------------------------------- output


BETTER_HIGHER = {"enqueue_per_s": True, "e2e_tasks_per_s": True, "e2e_steady_tasks_per_s": True,
                 "e2e_cpu_ms_per_task": False, "e2e_peak_rss_mb": False, "latency_p50_ms": False,
                 "latency_p99_ms": False, "first_result_s": False, "oneshot_s": False}
COLUMNS = [("enqueue_per_s", "enqueue\ntasks/s"), ("e2e_tasks_per_s", "e2e\ntasks/s"),
           ("e2e_steady_tasks_per_s", "e2e steady\ntasks/s"), ("e2e_cpu_ms_per_task", "worker CPU\nms/task"),
           ("e2e_peak_rss_mb", "worker peak\nRSS MB"), ("latency_p50_ms", "latency\np50 ms"),
           ("latency_p99_ms", "latency\np99 ms"), ("first_result_s", "start to first\nresult s"),
           ("oneshot_s", "one-shot\nscript s")]


def advantage(key: str, ours: Any, theirs: Any) -> float | None:
    """How many times better taskq is on ``key`` (>1: taskq better)."""
    try:
        ours, theirs = float(ours), float(theirs)
    except (TypeError, ValueError):
        return None
    if not (ours > 0 and theirs > 0):
        return None
    return ours / theirs if BETTER_HIGHER[key] else theirs / ours


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return str(value)


def print_table(doc: dict[str, Any], console: Console) -> None:
    rows = doc["results"]
    ours = next((r for r in rows if r["framework"] == "taskq" and "error" not in r), None)
    table = Table(title=f"taskq vs peers: {doc['tasks']:,} no-op tasks (e2e: +{doc['enqueue_warmup']} warm-up), "
                        "one worker process each",
                  caption="peer cells: value (xR) where R = how many times better taskq is "
                          "(throughput: taskq/peer; CPU, RSS, latency: peer/taskq)")
    table.add_column("framework", no_wrap=True)
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    for r in rows:
        incomplete = any(n.startswith("e2e incomplete") for n in r.get("notes", []))
        label = r["framework"] + (" *" if r.get("chosen") else "") + (" †" if incomplete else "")
        if "error" in r:
            table.add_row(label, f"[red]error: {r['error'][:300]}[/]", *[""] * (len(COLUMNS) - 1))
            continue
        cells = []
        for key, _ in COLUMNS:
            value = r.get(key)
            cell = fmt(value)
            if ours is not None and r is not ours:
                ratio = advantage(key, ours.get(key), value)
                if ratio is not None:
                    cell += f" (x{ratio:.2g})" if ratio < 10 else f" (x{ratio:.0f})"
            cells.append(cell)
        table.add_row(label, *cells)
    console.print(table)
    for r in rows:
        mark = " †" if any(n.startswith("e2e incomplete") for n in r.get("notes", [])) else ""
        console.print(f"[bold]{r['framework']}{mark}[/]: {r.get('config', '')}"
                      + (f"  (load avg before: {r['loadavg_before']})" if "loadavg_before" in r else ""))
        for note in r.get("notes", []):
            console.print(f"   note: {note}")
        if "error" in r:
            console.print(f"   [red]error:[/] {r['error']}")
    if doc.get("celery_pool_choice"):
        console.print(doc["celery_pool_choice"])
    env = doc["environment"]
    console.print(f"services: {env['broker']} + {env['backend']} ({'started here' if env['services_started_here'] else 'from env'});"
                  f" {env['cpus']} CPUs, python {env['python']}, taskq {env['taskq']}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tasks", type=int, default=20000, help="tasks per framework (default 20000)")
    parser.add_argument("--rounds", type=int, default=1000, help="latency round trips (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed round trips first (default 50)")
    parser.add_argument("--only", default=",".join(FRAMEWORKS), help=f"comma list of {', '.join(FRAMEWORKS)}")
    parser.add_argument("--celery-pools", default="threads:8,prefork:2",
                        help="Celery worker pools to try on Redis, pool:concurrency (default threads:8,prefork:2)")
    parser.add_argument("--celery-kafka-pool", default="auto",
                        help="pool:concurrency for celery-kafka (default auto: the faster Celery pool on Redis)")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds allowed for enqueue and for e2e of one framework (default 300)")
    parser.add_argument("--latency-budget", type=float, default=120.0,
                        help="seconds allowed for the round trips of one framework (default 120)")
    parser.add_argument("--stall", type=float, default=60.0,
                        help="give up e2e when no task finished for this many seconds (default 60)")
    parser.add_argument("--enqueue-warmup", type=int, default=100,
                        help="tasks sent before the enqueue timing starts; the worker runs them too (default 100)")
    parser.add_argument("--starts", type=int, default=3,
                        help="worker starts and one-shot scripts per framework, medians reported (default 3; 0: skip)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--out", type=Path, help="also write the JSON results to this file")
    args = parser.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown framework(s) {sorted(unknown)}; choose from {FRAMEWORKS}")
    celery_pools = [(p.split(":")[0], int(p.split(":")[1])) for p in args.celery_pools.split(",")]

    err = Console(stderr=True)
    start = not (os.environ.get("TASKQ_BROKER_URL", "").startswith("kafka://")
                 and os.environ.get("TASKQ_RESULT_BACKEND", "").startswith("redis://"))
    with bench.services(start, err) as target:
        redis_url = target.backend
        kafka_bootstrap = target.broker[len("kafka://"):].split(",")[0]
        results: list[dict[str, Any]] = []
        doc: dict[str, Any] = {"tasks": args.tasks, "enqueue_warmup": args.enqueue_warmup, "rounds": args.rounds,
                               "warmup": args.warmup,
                               "environment": bench.environment(target), "results": results}

        def attempt(label: str, make: Callable[[], Any], progress: Progress) -> dict[str, Any]:
            client = None
            try:
                client = make()
                row = measure(client, redis_url, args.tasks, args.rounds, args.warmup, args.budget,
                              args.latency_budget, progress, args.enqueue_warmup, args.stall)
                if args.starts > 0 and "error" not in row:
                    try:
                        row.update(measure_starts(client, redis_url, args.starts, progress))
                    except Exception as exc:  # noqa: BLE001 - keep the rest of the row
                        row.setdefault("notes", []).append(f"starts not measured: {type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - record the exact error and go on
                row = {"framework": label, "config": getattr(client, "config", ""),
                       "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            finally:
                if client is not None:
                    client.close()
            results.append(row)
            return row

        chosen_pool = celery_pools[0]
        with bench.make_progress(err) as progress:
            if "taskq" in only:
                attempt("taskq", lambda: TaskqClient(target), progress)
            if "taskq-low-latency" in only:
                attempt("taskq linger.ms=0", lambda: TaskqClient(target, linger_ms=0), progress)
            if "celery-redis" in only:
                rows = []
                for pool, conc in celery_pools:
                    make = functools.partial(
                        PeerClient, f"celery-redis {pool}", "celery_app", redis_url, redis_url, conc, pool,
                        f"Celery 5, Redis broker + Redis results, worker --pool {pool} -c {conc}")
                    rows.append((attempt(f"celery-redis {pool}", make, progress), (pool, conc)))
                ok = [(r, pc) for r, pc in rows if "e2e_startup_s" in r]  # e2e completed
                if ok:
                    best, chosen_pool = max(ok, key=lambda item: item[0]["e2e_tasks_per_s"])
                    best["chosen"] = True
                    doc["celery_pool_choice"] = (
                        f"Celery pool: {chosen_pool[0]} -c {chosen_pool[1]} was faster end to end on Redis "
                        f"(" + ", ".join(f"{pc[0]} -c {pc[1]}: {r['e2e_tasks_per_s']:,.0f}/s" for r, pc in ok)
                        + "); used for celery-kafka and marked *.")
            if "celery-kafka" in only:
                pool, conc = chosen_pool
                if args.celery_kafka_pool != "auto":
                    pool, conc = args.celery_kafka_pool.split(":")[0], int(args.celery_kafka_pool.split(":")[1])
                attempt("celery-kafka", lambda: PeerClient(
                    "celery-kafka", "celery_app", f"confluentkafka://{kafka_bootstrap}", redis_url, conc, pool,
                    f"Celery 5 on kombu's confluentkafka transport (polling_interval "
                    f"{os.environ.get('BENCH_POLLING_INTERVAL', '0.01')} s), Redis results, "
                    f"worker --pool {pool} -c {conc}"), progress)
            if "dramatiq" in only:
                attempt("dramatiq", lambda: PeerClient(
                    "dramatiq", "dramatiq_app", redis_url, redis_url, 8, "threads",
                    "Dramatiq, Redis broker + Redis results middleware, 1 process x 8 threads"), progress)

    ours = next((r for r in results if r["framework"] == "taskq" and "error" not in r), None)
    if ours is not None:
        for r in results:
            if r is not ours and "error" not in r:
                r["taskq_advantage"] = {k: advantage(k, ours.get(k), r.get(k)) for k in BETTER_HIGHER}
    text = json.dumps(doc, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    if args.json:
        print(text)
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        print_table(doc, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
