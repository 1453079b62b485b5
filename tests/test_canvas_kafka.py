"""Canvas on real Kafka and Redis: expiry of the bookkeeping, per-key order, and a kill -9 of the worker
that finishes a chord's last header task."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskq import Taskq
from taskq.canvas import chain, chord, group
from taskq.errors import MessageTooLarge
from taskq.flow import all_ids
from tests.apps.canvasapp import build_app, read_journal
from tests.support import WorkerProcess, env_for, fault_line, read_records, wait_until, worker_thread

TIMEOUT = 60


def kafka_app(kafka_url: str, redis_url: str, prefix: str, **settings: object) -> Taskq:
    return build_app(broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.", group=f"{prefix}.group",
                     producer_options={"linger.ms": 0}, connect_timeout=30, **settings)


def test_group_and_chord_bookkeeping_expires_with_the_results(kafka_url: str, redis_url: str, unique: str) -> None:
    """Celery #5230: every key a canvas writes (results, chord state and parts, children) has the
    results' expiry, so Redis memory does not grow with finished workflows."""
    app = kafka_app(kafka_url, redis_url, f"ttl{unique}", result_expires=300, default_partitions=2)
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    with worker_thread(app, concurrency=4):
        workflow = chain(add.s(1, 1), group(add.s(1), add.s(2)), chord([add.si(3, 3), add.si(4, 4)], tsum.s(5)))
        result = workflow.apply_async()
        assert result.get(timeout=TIMEOUT) == 19  # (3+3) + (4+4) + 5: the header ignores the group's [3, 4]
        plain = group(add.s(i, i) for i in range(3)).apply_async()
        assert plain.get(timeout=TIMEOUT) == [0, 2, 4]
    client = redis.Redis.from_url(redis_url)
    ids = set(all_ids(workflow.to_dict())) | {plain.id}
    keys = [k for k in client.scan_iter("taskq-*") if any(i.encode() in k for i in ids)]
    kinds = {k.decode().split(":")[0] for k in keys}
    assert kinds >= {"taskq-result", "taskq-chord", "taskq-chord-parts", "taskq-chord-state", "taskq-children"}
    ttls = {k.decode(): client.ttl(k) for k in keys}
    assert all(0 < ttl <= 300 for ttl in ttls.values()), ttls
    app.close()


def test_a_chord_that_outlasts_the_result_expiry_still_runs_its_body(
        kafka_url: str, redis_url: str, unique: str) -> None:
    """Each header result arrives well within the expiry, but the whole chord takes longer: the chord's
    own record (its body, its size) expired and every later report was dropped, the body never ran."""
    app = kafka_app(kafka_url, redis_url, f"exp{unique}", result_expires=3, default_partitions=2)
    nap, body = app.tasks["canvas.nap"], app.tasks["canvas.body"]
    with worker_thread(app, concurrency=1):  # one at a time: about 5 s in all
        result = chord([nap.s(i, 1.2) for i in range(4)], body.s(label="slow")).apply_async()
        assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3]
    app.close()


def test_a_users_chains_run_in_order(kafka_url: str, redis_url: str, unique: str, journal: str) -> None:
    """Per-key order inside canvases: one user's chains, sent back to back, run each step in send order."""
    app = kafka_app(kafka_url, redis_url, f"ord{unique}", default_partitions=3)
    step = app.tasks["canvas.step"]
    chains, steps = 6, 4
    with worker_thread(app, concurrency=8):
        results = []
        for user in ("u1", "u2"):
            for c in range(chains):
                first = step.s(None, user=user, seq=c * 10, sleep=0.02)
                rest = [step.s(user=user, seq=c * 10 + s) for s in range(1, steps)]
                results.append(chain(first, *rest).apply_async())
        app.flush()
        for r in results:
            r.get(timeout=TIMEOUT)
    lines = read_journal(journal)
    for user in ("u1", "u2"):
        seqs = [int(line.split()[2]) for line in lines if line.split()[1] == user]
        assert len(seqs) == chains * steps
        for s in range(steps):  # the s-th steps of the user's chains ran in chain order
            assert [q for q in seqs if q % 10 == s] == [c * 10 + s for c in range(chains)], seqs
        for c in range(chains):  # and each chain's steps in step order
            assert [q for q in seqs if q // 10 == c] == [c * 10 + s for s in range(steps)], seqs
    app.close()


def test_a_chord_body_too_large_to_send_fails_instead_of_waiting_for_ever(
        kafka_url: str, redis_url: str, unique: str, journal: str) -> None:
    """Three results of 400 kB make a body message over the broker's 1 MB: the body and what follows
    it fail with MessageTooLarge and the body's error callback runs; the body used to be dropped with a
    log line, its result PENDING for ever."""
    app = kafka_app(kafka_url, redis_url, f"big{unique}", default_partitions=2)
    mul, body, collect, errback = (app.tasks[f"canvas.{n}"] for n in ("mul", "body", "collect", "errback"))
    with worker_thread(app, concurrency=4):
        big_body = body.s().set(link_error=errback.s(label="body"))
        workflow = chain(chord([mul.s("x" * 400_000, 1) for _ in range(3)], big_body), collect.s())
        result = workflow.apply_async()
        with pytest.raises(MessageTooLarge, match="canvas.body"):
            result.get(timeout=TIMEOUT)
        assert app.AsyncResult(big_body.id).status == "FAILURE"
        wait_until(lambda: any(line.startswith(f"errback body {big_body.id}") for line in read_journal(journal)),
                   TIMEOUT, "the body's error callback")
        assert not any(line.startswith(("body", "collect")) for line in read_journal(journal))
    app.close()


@pytest.fixture
def crash_setup(kafka_url: str, redis_url: str, unique: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    prefix = f"kill{unique}"
    env = {**env_for(kafka_url, redis_url, prefix), "TASKQ_DEFAULT_PARTITIONS": "4", "TASKQ_CONNECT_TIMEOUT": "30",
           "CANVAS_JOURNAL": str(tmp_path / "journal.log"), "CANVAS_CRASH_FLAG": str(tmp_path / "crashed")}
    yield env


def test_kill_9_of_the_worker_finishing_the_last_header_neither_loses_nor_duplicates_the_body(
        crash_setup: dict[str, str]) -> None:
    """The worker that completes the chord is killed after the body was sent and acknowledged, before
    the chord is marked fired and the header task's offset committed. The survivor re-runs that
    header task, sends the body again with the same id, and skips that copy: one body run."""
    env = crash_setup
    app = build_app(broker=env["TASKQ_BROKER_URL"], backend=env["TASKQ_RESULT_BACKEND"],
                    topic_prefix=env["TASKQ_TOPIC_PREFIX"], group=env["TASKQ_GROUP"], default_partitions=4,
                    connect_timeout=30)
    topics = [t.topic for t in app.tasks.values()]
    app.ensure_topics({**{t: 4 for t in topics}, **{app.dlq_topic(t): 4 for t in topics},
                       **{t: 4 for t in app.delay_topics}})
    workers: list[WorkerProcess] = []
    try:
        for i in range(2):
            workers.append(WorkerProcess("tests.apps.canvasapp", env, "-c", "4", name=f"w{i}"))
            workers[-1].wait_for("assigned")
        nap, body = app.tasks["canvas.nap"], app.tasks["canvas.body"]
        workflow = chord([nap.s(i, 0.1) for i in range(8)], body.s(label="k"))
        result = workflow.apply_async()
        app.flush()
        wait_until(lambda: os.path.exists(env["CANVAS_CRASH_FLAG"]), TIMEOUT, "a worker to crash")
        wait_until(lambda: any(w.proc.poll() is not None for w in workers), 10, "the crashed worker to exit")
        assert [w.proc.returncode for w in workers if w.proc.poll() is not None] == [-9]
        assert result.get(timeout=TIMEOUT) == list(range(8))
        # the survivor takes over (after the session timeout), re-runs the last header task and sends
        # the body again; wait until that copy was consumed too
        wait_until(lambda: len([line for line in read_journal(env["CANVAS_JOURNAL"]) if line.startswith("nap")]) > 8,
                   TIMEOUT, "the last header task to run again")
        body_topic = app.tasks["canvas.body"].topic

        def body_topic_done() -> bool:
            high = sum(hi for _, hi in app.broker.watermarks(body_topic).values())
            return high == 2 and sum(app.broker.committed(app.group, body_topic).values()) == high

        wait_until(body_topic_done, TIMEOUT, "both body messages consumed and committed")
        journal = read_journal(env["CANVAS_JOURNAL"])
        with open(env["CANVAS_CRASH_FLAG"]) as f:
            killed_pid = f.read().split()[0]
        # a body run begun by the killed worker itself (it consumes the body topic too) died with it
        bodies = [line for line in journal if line.startswith("body k") and not line.endswith(f"pid={killed_pid}")]
        copies = [r for r in read_records(app, body_topic, 2, timeout=10) if r.header("id") == result.id.encode()]
        naps = [line for line in journal if line.startswith("nap")]
        fault_line("chord-kill-9", 8, len(set(naps)), 8 - len(set(naps)), len(bodies) - 1,
                   f"body_messages={len(copies)} header_runs={len(naps)} "
                   f"body_runs_cut_by_the_kill={sum(line.startswith('body k') for line in journal) - len(bodies)}")
        assert [line.split(" pid=")[0] for line in bodies] == [f"body k {list(range(8))}"]
        assert len(copies) == 2, "the body was sent again with the same id after the crash"
        assert sorted(set(naps)) == sorted(f"nap {i}" for i in range(8))
    finally:
        for w in workers:
            w.stop()
        app.close()
