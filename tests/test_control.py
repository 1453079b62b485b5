"""Control features on real Kafka and Redis: unique tasks, periodic tasks and beats, replay, topics,
several worker processes under one supervisor."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis
from click.testing import CliRunner

from taskq.app import Taskq
from taskq.beat import Beat
from taskq.cli import main
from taskq.errors import BrokerError, ConfigError, TaskRevoked
from tests.support import (
    ROOT,
    WorkerProcess,
    client_app,
    env_for,
    read_records,
    wait_results,
    wait_until,
    worker_thread,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
APP = "tests.apps.control"
SENT = re.compile(r"beat \S+ sent ")  # the beat's log line for a tick it sent


@pytest.fixture
def env(kafka_url: str, redis_clean: str, unique: str) -> dict[str, str]:
    return env_for(kafka_url, redis_clean, f"ctl{unique}")


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Taskq]:
    app = client_app(env, "control")
    yield app
    app.close()


def cli(env: dict[str, str], *args: str) -> str:
    sys.modules.pop(APP, None)  # the app module reads its settings from `env` when imported
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def count(app: Taskq, topic: str) -> int:
    """Messages in ``topic`` (acknowledged ones: call after ``app.flush()``)."""
    return sum(hi - lo for lo, hi in app.broker.watermarks(topic).values())


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "taskq.cli", "--log-level", "INFO", *args], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --------------------------------------------------------------------------- unique tasks


def test_unique_task_returns_the_first_result_inside_its_window(app: Taskq) -> None:
    def report(day: str, extra: int = 0) -> str:
        return day

    def by_user(user: str, n: int) -> int:
        return n

    t = app.task(report, name="ctl.report", unique_for=1.5)
    u = app.task(by_user, name="ctl.by_user", unique_for=30, unique_key=lambda user, n: user)
    first = t.delay("mon")
    assert t.delay("mon").id == first.id  # same arguments: the first call's result
    assert t.apply_async(("mon",), {}).id == first.id
    other = t.delay("tue")
    assert other.id != first.id
    assert t.delay("mon", extra=1).id not in (first.id, other.id)
    a = u.delay("ann", 1)
    assert u.delay("ann", 2).id == a.id  # unique_key: only the user counts
    assert u.delay("bob", 1).id != a.id
    app.flush()
    time.sleep(1.6)  # the 1.5 s window of ctl.report ends
    later = t.delay("mon")
    assert later.id != first.id
    app.flush()
    assert count(app, t.topic) == 4  # mon, tue, mon with extra=1, mon after the window
    sent = [r.header("id").decode() for r in read_records(app, t.topic, 4)]
    assert {first.id, other.id, later.id} <= set(sent), sent
    assert count(app, u.topic) == 2  # ann once, bob once


# --------------------------------------------------------------------------- periodic tasks


def test_beat_restart_sends_the_last_missed_tick_once_and_no_other(app: Taskq) -> None:
    def job() -> None: ...

    app.periodic_task(job, every=10, name="ctl.job")
    clock = [1_000_000_000.5]
    first = Beat(app, name="b1", lease=5, clock=lambda: clock[0])
    assert first.step() == []  # a schedule seen for the first time starts with its next tick
    clock[0] = 1_000_000_010.2
    sent = first.step()
    schedule = app.schedules["ctl.job"]
    assert sent == [schedule.task_id(app.group, 1_000_000_010.0)]
    clock[0] = 1_000_000_015.0
    assert first.step() == []  # nothing due between ticks
    first.resign()
    clock[0] = 1_000_000_041.0  # down across ticks 20, 30 and 40
    second = Beat(app, name="b2", lease=5, clock=lambda: clock[0])
    assert second.step() == [schedule.task_id(app.group, 1_000_000_040.0)]  # only the last one missed
    third = Beat(app, name="b3", lease=5, clock=lambda: clock[0])
    second.resign()
    assert third.step() == []  # tick 40 was sent already: a restart never doubles it
    third.resign()
    assert count(app, app.get_task("ctl.job").topic) == 2
    records = read_records(app, app.get_task("ctl.job").topic, 2)
    ticks = sorted(r.header("x-beat-tick").decode() for r in records)
    assert ticks == ["2001-09-09T01:46:50+00:00", "2001-09-09T01:47:20+00:00"], ticks


def test_a_tick_whose_send_was_not_acknowledged_is_sent_by_the_next_beat(app: Taskq,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def job() -> None: ...

    app.periodic_task(job, every=10, name="ctl.job")
    clock = [1_000_000_000.5]
    first = Beat(app, name="b1", lease=1, clock=lambda: clock[0])
    assert first.step() == []
    clock[0] = 1_000_000_010.2
    with monkeypatch.context() as m:  # the beat dies (or Kafka fails) before the tick is acknowledged
        m.setattr(app, "flush", lambda *a, **kw: (_ for _ in ()).throw(BrokerError("no acknowledgement")))
        with pytest.raises(BrokerError):
            first.step()
    tick_id = app.schedules["ctl.job"].task_id(app.group, 1_000_000_010.0)
    second = Beat(app, name="b2", lease=1, clock=lambda: clock[0])
    assert second.step() == []  # b1 still leads: its lease has not run out
    time.sleep(1.2)
    assert second.step() == [tick_id]  # b1's lease and its short tick claim ran out: b2 sends the tick
    second.resign()
    third = Beat(app, name="b3", lease=1, clock=lambda: clock[0])
    time.sleep(1.2)  # longer than the short claim: the acknowledged tick's claim was made long
    assert third.step() == []
    third.resign()
    records = read_records(app, app.get_task("ctl.job").topic, 2)  # b1's message arrived after all
    assert [r.header("id") for r in records] == [tick_id.encode()] * 2  # twice, one id: a worker runs it once


def test_three_beats_one_tick_each_and_hand_over_after_a_kill(env: dict[str, str], app: Taskq) -> None:
    env = {**env, "BEAT_EVERY": "1"}
    lease = 2.0
    beats = [spawn(env, "beat", "-A", APP, "--lease", str(lease), "-n", f"beat{i}") for i in range(3)]
    logs: dict[int, list[str]] = {i: [] for i in range(3)}
    def read(i: int) -> None:
        assert beats[i].stdout is not None
        for line in beats[i].stdout:
            logs[i].append(line)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
    for r in readers:
        r.start()
    try:
        def leader() -> int | None:
            leading = [i for i in range(3) if any("leads" in line for line in logs[i])]
            return leading[0] if leading else None

        wait_until(lambda: leader() is not None, 60, "a beat to lead")
        first = leader()
        assert first is not None
        wait_until(lambda: sum(bool(SENT.search(line)) for line in logs[first]) >= 3, 30, "three ticks from the leader")
        beats[first].kill()
        killed_at = time.time()
        wait_until(lambda: any("leads" in line for i in range(3) if i != first for line in logs[i]), 30,
                   "another beat to take over")
        took_over = time.time() - killed_at
        others = [i for i in range(3) if i != first]
        wait_until(lambda: sum(bool(SENT.search(line)) for i in others for line in logs[i]) >= 3, 30,
                   "three ticks from the new leader")
    finally:
        for b in beats:
            if b.poll() is None:
                b.send_signal(signal.SIGTERM)
        for b in beats:
            b.wait(30)
    topic = app.topic_for("tests.apps.control.tick")
    records = read_records(app, topic, 10_000, timeout=5)
    ids = [r.header("id").decode() for r in records]
    ticks = sorted(datetime.fromisoformat(r.header("x-beat-tick").decode()).timestamp() for r in records)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(f"\nBEAT three beats: ticks={len(ticks)} unique_ids={len(set(ids))} took_over_s={took_over:.2f} "
          f"max_gap_s={max(gaps):.0f}")
    assert len(ids) == len(set(ids)) == len(ticks) >= 6  # never a tick twice
    assert took_over < lease + 2  # hand-over within the lease (plus a renewal round)
    assert max(gaps) <= lease + 2  # at most the ticks inside the hand-over are skipped
    senders = {i for i in range(3) if any(SENT.search(line) for line in logs[i])}
    assert first in senders and len(senders) == 2  # one leader at a time: the killed one, then one other


# --------------------------------------------------------------------------- replay


def test_replay_from_time_and_offset_with_key_and_provenance(env: dict[str, str], app: Taskq) -> None:
    def echo(key: str, seq: int, sleep: float = 0.0) -> int:
        return seq

    task = app.task(echo, name="tests.apps.control.echo", key="key")
    app.ensure_topic(task.topic, 3)
    early = [task.delay(f"k{i % 3}", i) for i in range(6)]
    app.flush()
    time.sleep(0.05)
    middle = datetime.now(timezone.utc)
    time.sleep(0.05)
    late = [task.delay(f"k{i % 3}", i) for i in range(6, 12)]
    app.flush()

    dry = cli(env, "replay", "-A", APP, "tests.apps.control.echo", "--from-time", middle.isoformat(), "--dry-run")
    assert sorted(re.findall(r"id=(\w+) ->", dry)) == sorted(r.id for r in late)
    assert count(app, task.topic) == 12  # a dry run sends nothing

    out = cli(env, "replay", "-A", APP, "tests.apps.control.echo", "--from-time", middle.isoformat(), "--key", "k1")
    originals = {r.id for r in late[1::3]}  # seq 7 and 10 have key k1
    assert set(re.findall(r"id=(\w+) ->", out)) == originals
    records = read_records(app, task.topic, 14, timeout=10)
    replayed = [r for r in records if r.header("replay-of")]
    assert {r.header("replay-of").decode() for r in replayed} == originals
    for r in replayed:
        assert r.key == b"k1" and r.header("id").decode() not in originals
        origin = next(o for o in records if o.header("id") == r.header("replay-of"))
        assert (r.header("replay-topic").decode(), int(r.header("replay-partition")), int(r.header("replay-offset"))) \
            == (origin.topic, origin.partition, origin.offset)
        assert r.partition == origin.partition and r.value == origin.value

    by_offset = cli(env, "replay", "-A", APP, "tests.apps.control.echo", "--from-offset", "3", "--dry-run",
                    "--to-time", middle.isoformat())
    offsets = [int(m) for m in re.findall(r"\]@(\d+)", by_offset)]
    assert offsets and all(o >= 3 for o in offsets)
    assert set(re.findall(r"id=(\w+) ->", by_offset)) <= {r.id for r in early}  # --to-time ends before `late`


# --------------------------------------------------------------------------- topics


def test_topics_lists_and_alter_grows_with_a_placement_note(env: dict[str, str], app: Taskq) -> None:
    def echo(key: str, seq: int, sleep: float = 0.0) -> int:
        return seq

    task = app.task(echo, name="tests.apps.control.echo", key="key")
    app.ensure_topics({task.topic: 2, app.dlq_topic(task.topic): 2})
    for i in range(5):
        task.delay(f"k{i}", i)
    app.flush()
    listing = cli(env, "topics", "-A", APP)
    row = next((line for line in listing.splitlines() if task.topic in line and ".dlq" not in line), listing)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[1:] == ["task", "2", "1", "168 h", "5", "5"], cells  # partitions, replication, retention, lag
    out = cli(env, "topics", "-A", APP, "alter", "tests.apps.control.echo", "--partitions", "6")
    assert "2 -> 6 partitions" in out and "murmur2" in out and "67%" in out, out
    assert app.broker.list_topics()[task.topic] == 6
    assert app.broker.list_topics()[app.dlq_topic(task.topic)] == 6
    sys.modules.pop(APP, None)
    shrink = CliRunner().invoke(main, ["topics", "-A", APP, "alter", "tests.apps.control.echo", "--partitions", "3"],
                                env=env)
    assert shrink.exit_code != 0 and "can only add partitions" in shrink.output


# --------------------------------------------------------------------------- several processes


def test_processes_supervisor_restarts_a_dead_member_forwards_sigterm_with_beat(env: dict[str, str], app: Taskq) -> None:
    def echo(key: str, seq: int, sleep: float = 0.0) -> int:
        return seq

    task = app.task(echo, name="tests.apps.control.echo", key="key")
    app.ensure_topic(task.topic, 6)
    sup = spawn({**env, "BEAT_EVERY": "1"}, "worker", "-A", APP, "-Q", "tests.apps.control.echo",
                "-Q", "tests.apps.control.tick", "--processes", "2", "-n", "sup", "-c", "2", "--beat")
    lines: list[str] = []
    def read() -> None:
        assert sup.stdout is not None
        for line in sup.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()

    def text() -> str:
        return "".join(lines)

    try:
        wait_until(lambda: len(re.findall(r"started sup-\d \(pid (\d+)\)", text())) == 2, 60, "two children")
        wait_until(lambda: app.broker.group_members(app.group) == 2, 60, "two group members")
        victim = int(re.findall(r"started sup-0 \(pid (\d+)\)", text())[0])
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(re.findall(r"started sup-0 \(pid (\d+)\)", text())) == 2, 30, "sup-0 restarted")
        assert "exited -9; restarting it" in text()
        results = [task.delay(f"k{i % 7}", i) for i in range(200)]
        app.flush()
        records = wait_results(app, [r.id for r in results], timeout=90)
        assert [r.result for r in records if r is not None] == list(range(200))
        wait_until(lambda: app.broker.group_members(app.group) == 2, 60, "two members again")
        ticks = read_records(app, app.topic_for("tests.apps.control.tick"), 2)  # sent by the --beat thread
        assert len(ticks) >= 2  # read_records returns what one batch held: two or more
        done = wait_results(app, [r.header("id").decode() for r in ticks], timeout=30)
        assert all(r is not None and r.status == "SUCCESS" for r in done)
        children = [int(p) for p in re.findall(r"started sup-\d \(pid (\d+)\)", text())][-2:]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(60) == 0, text()
    finally:
        if sup.poll() is None:
            sup.kill()
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert text().count("stopped:") == 2  # each child finished cleanly


def test_second_sigterm_leaves_the_group_at_once_and_the_next_worker_runs_the_task(env: dict[str, str],
                                                                                   app: Taskq) -> None:
    """Cold shutdown on Kafka: the running task's offset stays uncommitted, so the next member runs it."""
    name = "tests.apps.control.slow"

    def slow(self, key: str, seconds: float) -> str:
        raise AssertionError("runs in the worker")

    task = app.task(slow, name=name, key="key", bind=True)
    app.ensure_topic(task.topic, 1)
    store = redis.Redis.from_url(env["TASKQ_RESULT_BACKEND"])
    first = WorkerProcess(APP, env, "-Q", name, "-c", "1", name="cold-1")
    try:
        first.wait_for("assigned")
        running = task.delay("a", 5)
        app.flush()
        wait_until(lambda: started(store, env, running.id), 60, "the task to start")
        first.proc.send_signal(signal.SIGTERM)
        first.wait_for("finishing running tasks")  # two signals at once would be handled as one
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(20) == 0, first.log
    finally:
        first.stop()
    assert "1 task(s) still running when told to stop at once" in first.log
    assert app.backend.get(running.id) is None
    second = WorkerProcess(APP, env, "-Q", name, "-c", "1", name="cold-2")
    try:
        assert running.get(timeout=60) == "a"
        assert app.backend.get(running.id).worker == "cold-2"  # type: ignore[union-attr]
    finally:
        second.stop()


# --------------------------------------------------------------------------- revoke


def started(store: redis.Redis, env: dict[str, str], task_id: str) -> bool:
    return bool(store.exists(f"{env['RECORDER_PREFIX']}:started:{task_id}"))


@pytest.mark.parametrize("pool", ["processes", "asyncio"])
def test_revoke_skips_queued_terminates_running_and_survives_restart(env: dict[str, str], app: Taskq,
                                                                     pool: str) -> None:
    name = "tests.apps.control.slow" if pool == "processes" else "tests.apps.control.asleep"

    def slow(self, key: str, seconds: float) -> str:  # noqa: ANN001
        raise AssertionError("runs in the worker")

    task = app.task(slow, name=name, key="key", bind=True)
    app.ensure_topic(task.topic, 1)
    store = redis.Redis.from_url(env["TASKQ_RESULT_BACKEND"])
    worker = WorkerProcess(APP, env, "-Q", name, "--pool", pool, "-c", "1", name=f"rv-{pool}")
    try:
        worker.wait_for("assigned")
        running = task.delay("a", 60)
        queued = task.delay("a", 0)  # same key: waits behind `running` inside the worker
        after = task.delay("b", 0)
        app.flush()
        wait_until(lambda: started(store, env, running.id), 60, "the long task to start")
        out = cli(env, "revoke", "-A", APP, queued.id)
        assert "revoked 1 task(s)" in out
        running.revoke(terminate=True)  # returns once the revocation is stored and acknowledged
        t0 = time.monotonic()
        wait_until(lambda: (r := app.backend.get(running.id)) is not None and r.worker is not None, 10,
                   "the worker to end the running task", interval=0.01)
        ended_in = time.monotonic() - t0
        records = wait_results(app, [after.id, queued.id], timeout=30)
        assert [r.status for r in records if r] == ["SUCCESS", "REVOKED"]
        assert not started(store, env, queued.id)  # revoked before it started: never ran
        assert running.status == "REVOKED" and queued.status == "REVOKED"
        with pytest.raises(TaskRevoked):
            queued.get(timeout=1)
        assert worker.terminate() == 0

        # revoked while no worker runs, sent, then a worker starts: skipped, offset committed
        later = task.apply_async(("c", 0), task_id="later" + env["RECORDER_PREFIX"])
        cli(env, "revoke", "-A", APP, later.id)
        fine = task.delay("d", 0)
        app.flush()
        worker = WorkerProcess(APP, env, "-Q", name, "--pool", pool, "-c", "1", name=f"rv2-{pool}")
        assert wait_results(app, [fine.id], timeout=60)[0].status == "SUCCESS"
        assert later.status == "REVOKED" and not started(store, env, later.id)
        high = sum(hi for _lo, hi in app.broker.watermarks(task.topic).values())
        wait_until(lambda: sum(app.broker.committed(app.group, task.topic).values()) == high, 10,
                   "every offset, the revoked ones included, committed")
        print(f"\nREVOKE {pool}: the worker ended the running task {ended_in:.2f} s after revoke() returned")
        assert ended_in < 1.0  # a revocation reaches the worker within a second
    finally:
        worker.stop()


def test_worker_warns_once_when_the_group_outnumbers_partitions(app: Taskq, caplog: pytest.LogCaptureFixture) -> None:
    def echo(key: str, seq: int, sleep: float = 0.0) -> int:
        return seq

    task = app.task(echo, name="tests.apps.control.echo", key="key")
    app.ensure_topics({task.topic: 1})
    caplog.set_level(logging.WARNING, logger="taskq.worker")
    with worker_thread(app, name="idle-a"), worker_thread(app, name="idle-b"):
        wait_until(lambda: "sit idle" in caplog.text, 30, "the idle-member warning")
        with worker_thread(app, name="idle-c"):  # a third member: a rebalance, and 3 > 1 partition again
            wait_until(lambda: "3 members" in caplog.text, 30, "the newcomer's warning")
    warnings = [r.getMessage() for r in caplog.records if "sit idle" in r.getMessage()]
    for name in ("idle-a", "idle-b", "idle-c"):
        assert sum(w.startswith(f"worker {name}:") for w in warnings) <= 1, warnings  # once per worker
    assert "2 members" in warnings[0] and task.topic in warnings[0] and "--partitions 2" in warnings[0]


# --------------------------------------------------------------------------- priorities


def test_priorities_share_of_starts_under_load_without_starvation(app: Taskq) -> None:
    order: list[str] = []
    lock = threading.Lock()

    def job(self, n: int) -> int:  # noqa: ANN001
        with lock:
            order.append(self.request.topic)
        time.sleep(0.002)
        return n

    task = app.task(job, name="ctl.prio", bind=True, priorities=3, partitions=2)
    with pytest.raises(ConfigError, match="priorities 0-2"):
        task.apply_async((1,), priority=3)
    per_level = 450
    for i in range(per_level):
        for level in (0, 1, 2):
            task.apply_async((i,), priority=level)
    app.flush()
    assert [count(app, t) for t in task.topics] == [per_level] * 3
    level_of = {t: level for level, t in enumerate(task.topics)}
    with worker_thread(app, name="prio", concurrency=2, batch_size=100):
        wait_until(lambda: len(order) == 3 * per_level, 120, "every task to run")
    # 300 starts from the point where every level has arrived (the first fetches bring the levels in
    # whatever order the broker answers), while every level still has a backlog
    levels = [level_of[t] for t in order]
    begin = max(levels.index(level) for level in (0, 1, 2)) + 20
    assert begin <= 250, f"a level arrived only after {begin} starts"
    window = levels[begin:begin + 300]
    shares = [window.count(level) / len(window) for level in (0, 1, 2)]
    print(f"\nPRIORITY shares of starts {begin}-{begin + 300} (weights 1:3:9 -> 0.077:0.231:0.692): "
          + ":".join(f"{s:.3f}" for s in shares))
    assert shares[2] > shares[1] > shares[0] > 0.02  # favoured in order, the lowest not starved
    assert 0.55 <= shares[2] <= 0.82 and 0.12 <= shares[1] <= 0.35
