"""Reliability on real Kafka and Redis: retries, worker churn, crashes, broker and Redis outages.

Every fault test prints one summary line (run with ``-s``)::

    FAULT <name>: sent=N finished=N lost=0 duplicates_executed=K

``finished`` counts tasks with a final result; ``duplicates_executed`` counts task bodies run more
than once (a redelivery skipped because its result was already final is not an execution).
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from taskq import BackendError, BrokerError, Taskq
from taskq.dlq import dead_letters, read_topic
from taskq.partitioner import partition_for
from taskq.results.base import FAILURE, SUCCESS
from tests.support import (
    WorkerProcess,
    client_app,
    env_for,
    fault_line,
    recorder_client,
    reliable_client,
    wait_results,
    wait_until,
)

RELIABLE = "tests.apps.reliable"
RECORDER = "tests.apps.recorder"
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


class Setup:
    """One test's environment: worker env, caller app and tasks, worker processes, a Redis client."""

    def __init__(self, env: dict[str, str], app: Taskq, tasks: dict, store: redis.Redis) -> None:
        self.env = env
        self.app = app
        self.tasks = tasks
        self.store = store
        self.workers: list[WorkerProcess] = []
        self.prefix = env["RECORDER_PREFIX"]

    def start(self, count: int = 1, *args: str, app_path: str = RELIABLE, settle: float = 0.0) -> list[WorkerProcess]:
        new = [WorkerProcess(app_path, self.env, "-c", "4", *args, name=f"w{len(self.workers) + i}")
               for i in range(count)]
        self.workers.extend(new)
        for w in new:
            w.wait_for("assigned")
        time.sleep(settle)
        return new

    def counter(self, name: str) -> int:
        return int(self.store.get(f"{self.prefix}:{name}") or 0)

    def floats(self, name: str) -> list[float]:
        return [float(x) for x in self.store.lrange(f"{self.prefix}:{name}", 0, -1)]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.app.close()
        self.store.close()


@pytest.fixture
def rel(kafka_url: str, redis_clean: str, unique: str, tmp_path: Path) -> Iterator[Setup]:
    """The ``tests.apps.reliable`` app on fresh topics."""
    env = env_for(kafka_url, redis_clean, f"rel{unique}")
    env["RELIABLE_LOG_DIR"] = str(tmp_path)
    app, tasks = reliable_client(env)
    for task in tasks.values():
        app.ensure_topic(task.topic, task.partitions)
    s = Setup(env, app, tasks, redis.Redis.from_url(redis_clean))
    yield s
    s.close()


def log_counts(directory: Path) -> collections.Counter[int]:
    """How many times each ``echo`` seq ran, from the workers' execution logs."""
    counts: collections.Counter[int] = collections.Counter()
    for path in directory.glob("*.log"):
        counts.update(int(line) for line in path.read_text().split())
    return counts


def records_of(app: Taskq, topic: str, task_id: str) -> list:
    return [r for r in read_topic(app, topic) if r.header("id") == task_id.encode()]


# =========================================================================== 1. retries


def test_autoretry_backoff_attempts_and_first_failure_travel_in_headers(rel: Setup) -> None:
    """Fails twice then succeeds: SUCCESS after 3 attempts; attempts and first-failure in the headers."""
    flaky = rel.tasks["flaky"]
    rel.start(1)
    ok = flaky.delay("k-ok", 2)
    dead = flaky.delay("k-dead", 10)  # more failures than max_retries=3 allows
    rel.app.flush()
    ok_rec, dead_rec = wait_results(rel.app, [ok.id, dead.id], timeout=60)
    assert ok_rec is not None and ok_rec.status == SUCCESS, (ok_rec, rel.workers[0].log[-3000:])
    assert ok_rec.attempts == 3 and ok.get(timeout=1) == 3
    # self.request.attempts seen by the task grows 0, 1, 2
    assert [int(x) for x in rel.store.lrange(f"{rel.prefix}:attempts:{ok.id}", 0, -1)] == [0, 1, 2]
    ran = rel.floats(f"ran_at:{ok.id}")
    gaps = [b - a for a, b in itertools.pairwise(ran)]
    # backoff with full jitter, capped by retry_backoff_max=2; plus forwarding latency
    assert all(0 <= g < 2 + 3 for g in gaps), gaps

    # the retried messages went back to the task topic with attempts and first-failure headers
    sent = records_of(rel.app, flaky.topic, ok.id)
    assert [r.header("attempts") for r in sent] == [None, b"1", b"2"], [r.headers for r in sent]
    first = [r.header("first-failure") for r in sent]
    assert first[0] is None and first[1] == first[2] is not None
    assert ran[0] <= float(first[1]) <= ran[1]
    assert all(r.header("origin-topic") is None for r in sent)  # the forwarder strips its routing header

    # max_retries=3: four runs, then FAILURE and a dead letter
    assert dead_rec is not None and dead_rec.status == FAILURE and dead_rec.attempts == 4, dead_rec
    assert [int(x) for x in rel.store.lrange(f"{rel.prefix}:attempts:{dead.id}", 0, -1)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="run 4 of 10"):
        dead.get(timeout=1)
    [letter] = [d for d in dead_letters(rel.app, flaky.name) if d.id == dead.id]
    assert letter.reason == "dead" and letter.attempts == 4 and "ValueError" in letter.error


def test_self_retry_countdown_and_apply_async_countdown(rel: Setup) -> None:
    """``self.retry(countdown=1)`` waits >= 1 s; ``apply_async(countdown=2)`` runs >= 2 s after sending."""
    flaky, stamp = rel.tasks["flaky"], rel.tasks["stamp"]
    rel.start(1)
    retried = flaky.delay("k-cd", 1, countdown=1)
    sent_at = time.time()
    later = stamp.apply_async(("k-later",), countdown=2)
    rel.app.flush()
    r1, r2 = wait_results(rel.app, [retried.id, later.id], timeout=30)
    assert r1 is not None and r1.status == SUCCESS and r1.attempts == 2, r1
    ran = rel.floats(f"ran_at:{retried.id}")
    assert len(ran) == 2 and ran[1] - ran[0] >= 1.0, ran
    assert r2 is not None and r2.status == SUCCESS, r2
    assert r2.result >= sent_at + 2, (r2.result - sent_at)
    assert rel.counter("executions") == 3  # 2 runs of flaky, 1 of stamp


def test_retry_wait_does_not_block_the_partition(rel: Setup) -> None:
    """While a task waits 6 s for its retry, tasks with other keys in its partition complete."""
    flaky = rel.tasks["flaky"]
    parts = flaky.partitions
    target = partition_for(b"blocker", parts)
    keys = [k for k in (f"other{i}" for i in range(2000)) if partition_for(k.encode(), parts) == target][:30]
    assert len(keys) == 30
    rel.start(1)
    blocker = flaky.delay("blocker", 1, countdown=6)
    rel.app.flush()
    wait_until(lambda: rel.store.llen(f"{rel.prefix}:attempts:{blocker.id}") >= 1, 30, "the blocker's first run")
    others = [flaky.delay(k, 0) for k in keys]
    rel.app.flush()
    done = wait_results(rel.app, [o.id for o in others], timeout=30)
    assert all(r is not None and r.status == SUCCESS for r in done)
    assert rel.app.AsyncResult(blocker.id).status == "RETRY"
    final = wait_results(rel.app, [blocker.id], timeout=30)[0]
    assert final is not None and final.status == SUCCESS and final.attempts == 2
    ran = rel.floats(f"ran_at:{blocker.id}")
    assert ran[1] - ran[0] >= 6.0, ran
    assert max(r.date_done for r in done) < ran[1], "other keys waited for the retry"
    # and they really shared the blocker's partition
    ids = {o.id.encode() for o in others} | {blocker.id.encode()}
    partitions = {r.partition for r in read_topic(rel.app, flaky.topic) if r.header("id") in ids}
    assert partitions == {target}


def test_countdown_survives_worker_restart(rel: Setup) -> None:
    """A delayed task held by a worker that is stopped (SIGTERM) is run by the next worker."""
    stamp = rel.tasks["stamp"]
    rel.start(1)
    sent_at = time.time()
    late = stamp.apply_async(("k-late",), countdown=3)
    rel.app.flush()
    time.sleep(1.0)  # the first worker's forwarder now holds it, not yet due
    assert rel.workers[0].terminate() == 0, rel.workers[0].log
    assert late.status == "PENDING" and rel.counter("executions") == 0
    rel.start(1)
    record = wait_results(rel.app, [late.id], timeout=60)[0]
    lost = int(record is None or record.status != SUCCESS)
    fault_line("worker-restart-with-countdown", 1, 1 - lost, lost, rel.counter("executions") - 1)
    assert not lost, rel.workers[1].log[-3000:]
    assert record.result >= sent_at + 3
    assert rel.counter("executions") == 1


# =========================================================================== 2. rebalance churn


def test_rebalance_churn_20k_tasks(kafka_url: str, redis_clean: str, unique: str) -> None:
    """20,000 tasks while workers join, leave (SIGTERM) and crash (kill -9) every few seconds."""
    total = 20_000
    env = env_for(kafka_url, redis_clean, f"churn{unique}")
    env["TASKQ_DEFAULT_PARTITIONS"] = "12"
    app, work = recorder_client(env)
    app.ensure_topic(work.topic, 12)
    store = redis.Redis.from_url(redis_clean)
    prefix = env["RECORDER_PREFIX"]
    workers: list[WorkerProcess] = []
    stopped: list[WorkerProcess] = []  # SIGTERMed: must exit 0
    events: list[str] = []
    names = itertools.count()

    def add() -> None:
        w = WorkerProcess(RECORDER, env, "-c", "4", name=f"w{next(names)}")
        workers.append(w)
        events.append(f"+{w.name}")

    def sigterm() -> None:
        w = workers.pop(0)
        w.proc.send_signal(signal.SIGTERM)
        stopped.append(w)
        events.append(f"-{w.name}")

    def kill9() -> None:
        w = workers.pop(0)
        w.kill()
        events.append(f"x{w.name}")

    executions = lambda: int(store.get(f"{prefix}:executions") or 0)
    try:
        for _ in range(3):
            add()
        for w in workers:
            w.wait_for("assigned")
        t0 = time.monotonic()
        results = [work.delay(f"k{i % 400}", i, 0.01) for i in range(total)]  # long enough for 6+ churn events
        app.flush()
        ids = [r.id for r in results]
        plan = [add, sigterm, add, kill9, add, sigterm, add, sigterm, add, sigterm, add, sigterm]
        step = 0
        while executions() < total and time.monotonic() - t0 < 150:
            time.sleep(2.5)
            if step < len(plan):
                plan[step]()
                step += 1
        records = wait_results(app, ids, timeout=max(30, 170 - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        finished = sum(r is not None and r.status == SUCCESS for r in records)
        runs = executions()
        refused = sum("commit on stop failed" in w.log for w in stopped)
        fault_line("rebalance-churn", total, finished, total - finished, runs - total,
                   f"events={' '.join(events)} stop_commits_refused={refused} elapsed={elapsed:.1f}s")
        assert finished == total, [w.log[-2000:] for w in workers]
        assert [r.result for r in records] == list(range(total))
        assert step >= 6, f"only {step} churn events happened before the run ended: make it longer"
        for w in stopped:
            assert w.proc.wait(60) == 0, w.log[-3000:]
        # Graceful hand-overs re-run nothing: only what the crashed worker ran but had not stored yet.
        assert 0 <= runs - total <= 100, runs - total
    finally:
        for w in workers + stopped:
            w.stop()
        app.close()
        store.close()


# =========================================================================== 3. kill -9 during retries


def test_kill_9_during_retries_loses_no_retry(rel: Setup) -> None:
    """Tasks failing their first 1-2 runs; the worker is killed mid-run; a new one finishes all."""
    flaky = rel.tasks["flaky"]
    count = 1500
    fails = [i % 3 for i in range(count)]
    rel.start(1)
    results = [flaky.delay(f"k{i % 150}", fails[i]) for i in range(count)]
    rel.app.flush()
    expected_runs = sum(f + 1 for f in fails)
    # kill once the first runs and some retries happened, and most retries still wait in the delay tiers
    wait_until(lambda: rel.counter("executions") >= count + 200, 60, "the first runs and some retries")
    runs_before_kill = rel.counter("executions")
    rel.workers[0].kill()
    rel.start(1)
    records = wait_results(rel.app, [r.id for r in results], timeout=90)
    finished = sum(r is not None and r.status == SUCCESS for r in records)
    runs = rel.counter("executions")
    pipe = rel.store.pipeline(transaction=False)
    for r in results:
        pipe.lrange(f"{rel.prefix}:attempts:{r.id}", 0, -1)
    attempts = [[int(a) for a in seen] for seen in pipe.execute()]
    # which attempt numbers ran twice: a redelivered attempt whose retry was already sent runs again
    # (its stored state is RETRY, not final, so the worker does not skip it)
    repeated: collections.Counter[int] = collections.Counter()
    for seen in attempts:
        repeated.update({a: n - 1 for a, n in collections.Counter(seen).items() if n > 1})
    # an attempt message written twice to the task topic was forwarded twice from its delay tier
    written = collections.Counter((r.header("id"), r.header("attempts")) for r in read_topic(rel.app, flaky.topic))
    fault_line("kill-9-during-retries", count, finished, count - finished, sum(repeated.values()),
               f"repeated_by_attempt={dict(sorted(repeated.items()))} runs={runs} (needed {expected_runs}) "
               f"runs_before_kill={runs_before_kill} forwarded_twice={sum(n - 1 for n in written.values())}")
    assert finished == count, rel.workers[1].log[-3000:]
    assert runs_before_kill < expected_runs, "the kill came after every retry had run"
    assert sum(len(seen) for seen in attempts) == runs
    # each task ran until it stopped failing, its attempts numbered from 0 without gaps
    assert all(len(seen) >= f + 1 and set(seen) == set(range(max(seen) + 1)) for seen, f in zip(attempts, fails))
    assert runs >= expected_runs


# =========================================================================== 5. Redis outage


def test_redis_down_10s_mid_run(rel: Setup, redis_server, tmp_path: Path) -> None:
    """Redis stops for 10 s mid-run: no offset is committed past a result not stored, the workers
    retry storing, and every result is there once Redis is back; ``get()`` fails fast meanwhile.

    ``RedisServer.stop()`` runs without persistence, so a restarted server would come back empty and
    every result stored before the outage would vanish with it (a Redis durability matter, not a
    taskq one). To test taskq rather than that, the server is stopped with ``SHUTDOWN SAVE`` - the
    same outage for every client - and ``restart()`` reloads the snapshot. The snapshot also says
    exactly which results were stored before the outage.
    """
    from services import RedisServer  # scripts/services.py, on sys.path through conftest

    echo = rel.tasks["echo"]
    count = 6000
    group, topic = rel.app.group, echo.topic
    logs = tmp_path / "logs"
    logs.mkdir()
    rel.env["RELIABLE_LOG_DIR"] = str(logs)
    rel.start(2, settle=2)
    results = [echo.delay(f"k{i % 300}", i, 0.01) for i in range(count)]
    rel.app.flush()
    ids = [r.id for r in results]
    wait_until(lambda: sum(log_counts(logs).values()) >= 1500, 60, "1500 runs before the outage")
    pending = next(r for r in reversed(results) if r.status == "PENDING")
    dump = Path(redis_server.dir) / "dump.rdb"
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    try:
        rel.store.shutdown(save=True)
        wait_until(lambda: not redis_server.running, 10, "redis-server to exit")
        down_at = time.monotonic()
        shutil.copy(dump, snapshot / "dump.rdb")
        with pytest.raises(BackendError):
            pending.get(timeout=30)
        get_seconds = time.monotonic() - down_at
        runs_early = sum(log_counts(logs).values())
        time.sleep(max(0.0, 9.5 - (time.monotonic() - down_at)))
        committed = rel.app.broker.committed(group, topic)  # as the outage ends
        runs_late = sum(log_counts(logs).values())
    finally:
        if not redis_server.running:
            redis_server.restart()
        dump.unlink(missing_ok=True)
    outage = time.monotonic() - down_at
    # which results Redis held when it went down
    before = RedisServer(snapshot).start()
    peek = redis.Redis(port=before.port)
    try:
        stored_before = {k.decode().removeprefix("taskq-result:") for k in peek.keys("taskq-result:*")}
    finally:
        peek.close()
        before.close()
    below = [r.header("id").decode() for r in read_topic(rel.app, topic)
             if r.offset < committed.get(r.partition, 0)]
    records = wait_results(rel.app, ids, timeout=90)
    finished = sum(r is not None and r.status == SUCCESS for r in records)
    counts = log_counts(logs)
    fault_line("redis-down-10s", count, finished, count - finished, sum(counts.values()) - len(counts),
               f"get_raised_after={get_seconds:.2f}s outage={outage:.1f}s stored_before={len(stored_before)} "
               f"committed_at_end_of_outage={len(below)} runs_during_outage={runs_late - runs_early}")
    assert get_seconds < 5, f"AsyncResult.get() took {get_seconds:.1f} s to fail with Redis down"
    assert 0 < len(below) <= len(stored_before) < count
    assert set(below) <= stored_before, "offsets were committed for results Redis never stored"
    assert any("store results failed" in w.log for w in rel.workers), "no worker retried storing results"
    assert finished == count, [w.log[-3000:] for w in rel.workers]
    assert [r.result for r in records] == list(range(count))
    assert set(counts) == set(range(count)) and max(counts.values()) == 1, "a task ran twice"
    assert all(w.proc.poll() is None for w in rel.workers), "a worker died during the outage"


def test_redis_down_longer_than_outage_timeout_stops_the_worker_and_loses_nothing(rel: Setup, redis_server,
                                                                                   tmp_path: Path) -> None:
    """Redis stops for longer than ``outage_timeout`` (3 s here): the worker does not wait forever, it
    exits non-zero saying so (OutageTooLong) with the unstored work uncommitted. Redis back and a new
    worker started: every task finishes with its result, none lost (work not stored may run again).
    Redis is shut down with ``SHUTDOWN SAVE`` (as in the 10 s outage test) so the restart keeps what it held.
    """
    echo = rel.tasks["echo"]
    count = 1500
    logs = tmp_path / "logs"
    logs.mkdir()
    rel.env["RELIABLE_LOG_DIR"] = str(logs)
    rel.env["TASKQ_OUTAGE_TIMEOUT"] = "3"
    (first,) = rel.start(1, settle=1)
    results = [echo.delay(f"k{i % 100}", i, 0.01) for i in range(count)]
    rel.app.flush()
    ids = [r.id for r in results]
    wait_until(lambda: sum(log_counts(logs).values()) >= 200, 60, "200 runs before the outage")
    dump = Path(redis_server.dir) / "dump.rdb"
    try:
        rel.store.shutdown(save=True)
        wait_until(lambda: not redis_server.running, 10, "redis-server to exit")
        down_at = time.monotonic()
        code = first.proc.wait(60)  # bound 3 s, plus the pool's and the consumer's stop
        exited_after = time.monotonic() - down_at
    finally:
        if not redis_server.running:
            redis_server.restart()
        dump.unlink(missing_ok=True)
    fault_log = first.log
    rel.env["TASKQ_OUTAGE_TIMEOUT"] = "300"
    rel.start(1, settle=1)
    records = wait_results(rel.app, ids, timeout=120)
    finished = sum(r is not None and r.status == SUCCESS for r in records)
    counts = log_counts(logs)
    fault_line("redis-down-past-outage-timeout", count, finished, count - finished,
               sum(counts.values()) - len(counts), f"worker_exited_after={exited_after:.1f}s exit_code={code}")
    assert code != 0, fault_log[-3000:]
    assert "outage_timeout" in fault_log and "start the worker again" in fault_log, fault_log[-3000:]
    assert exited_after < 45, f"the worker took {exited_after:.1f} s to stop"
    assert finished == count, rel.workers[-1].log[-3000:]
    assert [r.result for r in records] == list(range(count))
    assert set(counts) == set(range(count)), "a task never ran"


# =========================================================================== 4. three-broker cluster


def _leaders(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int]]]:
    """partition -> (leader node id, replicas)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: (m.leader, list(m.replicas)) for p, m in meta.partitions.items()}


def test_three_brokers_leader_killed_mid_run_then_two_down(kafka_cluster3, redis_clean: str, unique: str) -> None:
    """Replication 3: the leader of the busiest partition dies mid-run - no task lost, none written twice.
    With two of three brokers down, sending fails loudly instead of dropping the task."""
    cluster = kafka_cluster3
    bootstrap = cluster.url.removeprefix("kafka://")
    env = env_for(cluster.url, redis_clean, f"cl{unique}")
    env["TASKQ_REPLICATION_FACTOR"] = "3"
    app = client_app(env, "recorder", replication_factor=3)

    def work(key: str, seq: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker process only")

    work = app.task(work, name="tests.apps.recorder.work", key="key")
    app.ensure_topic(work.topic, 6)
    leaders = _leaders(bootstrap, work.topic)
    assert all(len(replicas) == 3 for _, replicas in leaders.values()), leaders

    total = 8000
    keys = [f"k{i % 7}" if i % 2 else f"k{i % 200}" for i in range(total)]  # a few hot keys
    load = collections.Counter(partition_for(k.encode(), 6) for k in keys)
    busiest = load.most_common(1)[0][0]
    victim = leaders[busiest][0]
    store = redis.Redis.from_url(redis_clean)
    prefix = env["RECORDER_PREFIX"]
    workers = [WorkerProcess(RECORDER, env, "-c", "8", name=f"w{i}") for i in range(2)]
    killed: list[int] = []
    try:
        for w in workers:
            w.wait_for("assigned")
        results = []
        for start in range(0, total, 400):
            if start == total // 4:
                cluster.kill(victim)
                killed.append(victim)
            results += [work.delay(keys[i], i, 0.001) for i in range(start, start + 400)]
            time.sleep(0.4)
        app.flush(timeout=90)
        ids = [r.id for r in results]
        records = wait_results(app, ids, timeout=120)
        finished = sum(r is not None and r.status == SUCCESS for r in records)
        in_log = collections.Counter(r.header("id").decode() for r in read_topic(app, work.topic, timeout=60))
        runs = int(store.get(f"{prefix}:executions") or 0)
        moved_to = _leaders(bootstrap, work.topic)[busiest][0]
        fault_line("leader-killed-3-brokers", total, finished, total - finished, runs - total,
                   f"killed_node={victim} busiest_partition={busiest} new_leader={moved_to} "
                   f"log_records={sum(in_log.values())} log_duplicates={sum(n - 1 for n in in_log.values())}")
        assert moved_to != victim
        assert finished == total, [w.log[-3000:] for w in workers]
        assert [r.result for r in records] == list(range(total))
        assert set(in_log) == set(ids) and max(in_log.values()) == 1, "a task message was written twice"
        assert all(w.proc.poll() is None for w in workers), "a worker died with the broker"
        for w in workers:
            assert w.terminate() == 0, w.log[-3000:]
        cluster.restart(victim)
        killed.remove(victim)

        # Two of three brokers down: min.insync.replicas=2 cannot be met; the send must fail loudly.
        strict = client_app(env, "recorder", replication_factor=3, send_timeout=8, connect_timeout=8)
        task = strict.task(work.fn, name="tests.apps.recorder.work", key="key")
        strict.ensure_topic(task.topic, 6)
        down = [n for n in cluster.node_ports if n != victim][:2]
        for node in down:
            cluster.kill(node)
            killed.append(node)
        t0 = time.monotonic()
        with pytest.raises(BrokerError) as err:
            task.delay("k-lost", -1)
            strict.flush()
        failed_after = time.monotonic() - t0
        fault_line("two-of-three-brokers-down", 1, 0, 0, 0,
                   f"send_failed_loudly_after={failed_after:.1f}s error={str(err.value)[:120]!r}")
        assert failed_after < 30
        strict.close()
    finally:
        for w in workers:
            w.stop()
        for node in killed:
            cluster.restart(node)
        app.close()
        store.close()


def test_delayed_task_due_while_kafka_is_unreachable_is_forwarded_once_it_is_back(kafka_cluster3, redis_clean: str,
                                                                                   unique: str) -> None:
    """Every broker stops answering (SIGSTOP) for longer than ``connect_timeout`` just as a countdown task
    falls due: the forwarder's look-up of the task topics used to raise out of its thread, which ended,
    so no delayed task of the group came back while the worker ran on. It waits the outage out."""
    env = env_for(kafka_cluster3.url, redis_clean, f"fw{unique}")
    env["TASKQ_CONNECT_TIMEOUT"] = "2"
    app, tasks = reliable_client(env)
    stamp = tasks["stamp"]
    app.ensure_topic(stamp.topic, stamp.partitions)
    store = redis.Redis.from_url(redis_clean)
    worker = WorkerProcess(RELIABLE, env, "-c", "2")
    pids = kafka_cluster3.pids
    try:
        worker.wait_for("assigned")
        late = stamp.apply_async(("k-late",), countdown=3)
        app.flush()
        time.sleep(1.0)  # the forwarder holds it now, due in 2 s
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(7)  # past the due time and connect_timeout; within the session timeout
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        record = wait_results(app, [late.id], timeout=60)[0]
        lost = int(record is None or record.status != SUCCESS)
        runs = int(store.get(f"{env['RECORDER_PREFIX']}:executions") or 0)
        fault_line("kafka-unreachable-when-a-delayed-task-is-due", 1, 1 - lost, lost, runs - 1)
        assert not lost, worker.log[-3000:]
        assert "Exception in thread" not in worker.log, worker.log[-3000:]
        assert worker.proc.poll() is None and worker.terminate() == 0, worker.log[-3000:]
    finally:
        worker.stop()
        app.close()
        store.close()


def test_chain_step_finished_while_kafka_is_unreachable_sends_the_next_step_once_it_is_back(
        kafka_cluster3, redis_clean: str, unique: str) -> None:
    """A chain's first step ends while every broker stops answering (SIGSTOP) for longer than
    ``connect_timeout``; its worker runs only that step, so the next step's topic is one it has not
    checked yet. That check used to raise out of the finisher's thread, which ended: the worker ran on
    with nothing ever stored or committed again. It waits the outage out and the chain completes."""
    from taskq.canvas import chain
    from tests.apps.canvasapp import build_app

    env = env_for(kafka_cluster3.url, redis_clean, f"ch{unique}")
    env["TASKQ_CONNECT_TIMEOUT"] = "2"
    app = build_app(broker=env["TASKQ_BROKER_URL"], backend=env["TASKQ_RESULT_BACKEND"],
                    topic_prefix=env["TASKQ_TOPIC_PREFIX"], group=env["TASKQ_GROUP"])
    nap, add = app.tasks["canvas.nap"], app.tasks["canvas.add"]
    app.ensure_topics(app.task_topics())
    naps = WorkerProcess("tests.apps.canvasapp", env, "-c", "2", "-Q", "canvas.nap", name="naps")
    adds = WorkerProcess("tests.apps.canvasapp", env, "-c", "2", "-Q", "canvas.add", name="adds")
    pids = kafka_cluster3.pids
    try:
        naps.wait_for("assigned")
        adds.wait_for("assigned")
        result = chain(nap.s(1, 2.5), add.s(10)).delay()
        app.flush()
        time.sleep(1.0)  # the nap runs; it ends during the outage
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(7)  # past connect_timeout; within the session timeout
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert result.get(timeout=60) == 11, naps.log[-3000:]
        assert "Exception in thread" not in naps.log, naps.log[-3000:]
        assert naps.terminate() == 0 and adds.terminate() == 0, naps.log[-3000:] + adds.log[-3000:]
    finally:
        naps.stop()
        adds.stop()
        app.close()
