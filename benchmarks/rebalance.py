"""``taskq bench rebalance``: how long other workers stall when a worker joins and when one leaves.

A steady keyed load (``--rate`` tasks/s of ``bench.stamp``, keys round robin) runs on real Kafka with
two worker processes. ``--settle`` s after both of them run tasks a third worker starts; ``--hold`` s later
the first one is sent SIGTERM (a graceful leave). Every task returns ``[key, seq, started, ended]`` and its result
names the worker that ran it, so afterwards, per membership change:

- ``*_gap_ms``: the longest gap between two consecutive completions on any one of the other workers
  (the two that were there for the join; the two that stay for the leave), in the window from the
  change until ``--window`` s after the joiner's first or the leaver's last completion (a join's window
  ends at the leave at the latest);
- ``*_delay_ms``: the longest time from send to completion of a task sent in that window (this shows
  the partitions that moved: their tasks wait for the hand-over);
- ``baseline_gap_ms`` / ``baseline_delay_ms``: the same over the ``--window`` s before the join, with
  no change (the machine's own noise).

Every task must succeed with each key's sequence run in order, one at a time (``order_kept``).
``--protocol classic|consumer|both`` runs the classic group protocol (the default, cooperative-sticky)
and/or Kafka 4's ``group.protocol=consumer`` (KIP-848).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from benchmarks.bench import (
    STAMP,
    Phase,
    Target,
    WorkerProcess,
    check_key_order,
    cleanup,
    new_run_id,
    prepare_topics,
    taskq_worker,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from taskq.app import Taskq
    from taskq.results.base import ResultRecord

PROTOCOLS = ("classic", "consumer")
WARMUP_TIMEOUT = 60.0  # s for the two first workers to both run tasks (KIP-848 assigns at a heartbeat)


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest interval between consecutive ``times`` (sorted) that overlaps ``[start, end]``,
    counting from ``start`` to the first time and from the last one to ``end`` as well."""
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    before = [t for t in times if t < start]
    after = [t for t in times if t > end]
    if before:
        points[0] = before[-1]
    if after and not inside:
        points[-1] = after[0]
    return max((b - a for a, b in zip(points, points[1:])), default=end - start)


def stall_figures(records: Sequence[ResultRecord], sent: dict[str, float], others: Sequence[str], start: float,
                  end: float) -> tuple[float, float]:
    """(longest gap between completions on any of ``others``, longest send-to-completion delay of tasks
    sent in ``[start, end]``), in ms."""
    gaps = []
    for worker in others:
        times = sorted(r.result[3] for r in records if r.worker == worker)
        gaps.append(longest_gap(times, start, end))
    delays = [r.result[3] - sent[r.id] for r in records if start <= sent[r.id] <= end]
    return max(gaps, default=float("nan")) * 1000, max(delays, default=float("nan")) * 1000


def running_workers(app: Taskq, ids: Sequence[str]) -> set[str]:
    """The workers named in the stored results of ``ids``."""
    return {r.worker for r in app.backend.get_many(list(ids)) if r is not None and r.worker}


def worker_name(worker: WorkerProcess, records: Sequence[ResultRecord]) -> str:
    """The name (``host:pid``) ``worker`` stores in its results."""
    suffix = f":{worker.pid}"
    return next((r.worker for r in records if r.worker and r.worker.endswith(suffix)), f"?{suffix}")


def run_rebalance(target: Target, rate: float = 500.0, keys: int = 200, settle: float = 4.0, hold: float = 8.0,
                  window: float = 3.0, concurrency: int = 8, pool: str = "threads", protocol: str = "classic",
                  progress: Progress | None = None) -> dict[str, Any]:
    """One run: two workers under steady load, a third joins, later the first leaves (SIGTERM)."""
    run = new_run_id()
    app = target.app(run)
    stamp = app.get_task(STAMP)
    env = {"TASKQ_CONSUMER_OPTIONS": f"group.protocol={protocol}"}
    sent: dict[str, float] = {}
    workers: list[WorkerProcess] = []
    try:
        prepare_topics(app, [STAMP])
        for i in range(2):
            workers.append(taskq_worker(target, run, concurrency, pool, tasks=[STAMP], **env).start())
        seq = 0
        started: float | None = None  # when both first workers were seen completing tasks
        marks: dict[str, float] = {}
        next_check = 0.0
        with Phase(progress, f"rebalance {protocol}: {rate:g}/s, join {settle:g} s after both run, leave {hold:g} s "
                   "later", settle + 2 * hold) as phase:
            began = time.perf_counter()
            while True:
                now = time.perf_counter()
                elapsed = now - began
                if started is None and now >= next_check:
                    next_check = now + 0.25
                    if len(running_workers(app, list(sent)[-100:])) >= 2:
                        started = now
                    elif elapsed > WARMUP_TIMEOUT:
                        raise click.ClickException(f"the two workers did not both run tasks within {WARMUP_TIMEOUT:g} s")
                since = now - started if started is not None else -1.0
                if "join" not in marks and since >= settle:
                    marks["join"] = time.time()
                    workers.append(taskq_worker(target, run, concurrency, pool, tasks=[STAMP], **env).start())
                if "leave" not in marks and since >= settle + hold:
                    marks["leave"] = time.time()
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(workers[0].pid, signal.SIGTERM)
                if since >= settle + 2 * hold:
                    break
                for w in workers[1:]:
                    w.check()
                due = int(rate * elapsed) + 1
                while seq < due:
                    result = stamp.delay(f"k{seq % keys}", seq // keys)
                    sent[result.id] = time.time()
                    seq += 1
                app.producer.poll(0)
                phase.update(max(since, 0.0))
                time.sleep(0.002)
        app.flush()
        ids = list(sent)
        deadline = time.monotonic() + 120
        while True:
            records = [r for i in range(0, len(ids), 5000) for r in app.backend.get_many(ids[i:i + 5000])]
            if all(r is not None and r.ready for r in records) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        left_code = workers[0].proc.wait(60) if workers[0].proc is not None else None
    finally:
        for w in workers:
            w.stop()
        cleanup(app, list(sent))
    done = [r for r in records if r is not None and r.status == "SUCCESS"]
    first, second, joiner = (worker_name(w, done) for w in workers)
    joined_at = min((r.result[3] for r in done if r.worker == joiner), default=marks["join"])
    left_at = max((r.result[3] for r in done if r.worker == first), default=marks["leave"])
    join_end = min(joined_at + window, marks["leave"])  # the leave's own stall is counted there, not here
    leave_end = left_at + window
    join_gap, join_delay = stall_figures(done, sent, [first, second], marks["join"], join_end)
    leave_gap, leave_delay = stall_figures(done, sent, [second, joiner], marks["leave"], leave_end)
    base_gap, base_delay = stall_figures(done, sent, [first, second], marks["join"] - window, marks["join"])
    order = check_key_order([r.result for r in done])
    return {
        "protocol": protocol, "tasks": len(ids), "failed": len(ids) - len(done),
        "join_gap_ms": join_gap, "leave_gap_ms": leave_gap, "baseline_gap_ms": base_gap,
        "join_delay_ms": join_delay, "leave_delay_ms": leave_delay, "baseline_delay_ms": base_delay,
        "joiner_first_result_s": joined_at - marks["join"], "leaver_exit_s": left_at - marks["leave"],
        "leaver_exit_code": left_code, "order_kept": order["order_kept"],
        "order_violations": order["order_violations"],
    }
