"""The broker contract: the same cases against the embedded local broker and a real Kafka.

Kafka cases need the ``kafka_url`` session fixture from ``tests/conftest.py``; they are skipped
when it is missing. Run only the local ones with ``pytest tests/test_broker_contract.py -k local``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence

import pytest

from taskq.brokers.base import Broker, Consumer, Record, TopicPartition
from taskq.errors import BrokerError
from taskq.partitioner import partition_for

LOCAL_PATIENCE = 15.0
KAFKA_PATIENCE = 90.0


def name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"contract-{prefix}-{uuid.uuid4().hex[:10]}"


def patience(broker: Broker) -> float:
    """How long to wait for records or a rebalance on this broker."""
    return LOCAL_PATIENCE if broker.url.startswith("local:") else KAFKA_PATIENCE


@pytest.fixture(params=["local", "kafka"])
def broker(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[Broker]:
    """A LocalBroker on a fresh file, or a KafkaBroker on the session's Kafka."""
    if request.param == "local":
        from taskq.brokers.local import LocalBroker

        b: Broker = LocalBroker(f"local://{tmp_path}/broker.db")
    else:
        try:
            url = request.getfixturevalue("kafka_url")
        except pytest.FixtureLookupError:
            pytest.skip("no kafka_url fixture (tests/conftest.py provides it)")
        from taskq.brokers.kafka import KafkaBroker

        b = KafkaBroker(url)
    yield b
    b.close()


def drain(consumers: Sequence[Consumer], expected: int, timeout: float) -> list[list[Record]]:
    """Poll ``consumers`` in turn until together they returned ``expected`` records (or time runs out)."""
    got: list[list[Record]] = [[] for _ in consumers]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < expected and time.monotonic() < deadline:
        for i, c in enumerate(consumers):
            got[i].extend(c.consume(500, 0.05))
    return got


def settle(consumers: Sequence[Consumer], partitions: set[TopicPartition], timeout: float) -> list[Record]:
    """Poll until the members' assignments are non-empty, disjoint and cover ``partitions``."""
    seen: list[Record] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in consumers:
            seen.extend(c.consume(100, 0.05))
        sets = [set(c.assignment()) for c in consumers]
        if all(sets) and sum(map(len, sets)) == len(partitions) and set().union(*sets) == partitions:
            return seen
    raise AssertionError(f"group never settled: {[c.assignment() for c in consumers]}")


def check_contiguous(records: list[Record]) -> dict[int, list[Record]]:
    """Group by partition and assert offsets run 0, 1, 2, ... in each."""
    by_part: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_part[r.partition].append(r)
    for part, recs in by_part.items():
        assert [r.offset for r in recs] == list(range(len(recs))), f"partition {part} offsets not contiguous"
    return by_part


def test_ensure_topics_is_idempotent(broker: Broker) -> None:
    t = name("topics")
    broker.ensure_topics({t: 3})
    broker.ensure_topics({t: 3})
    assert broker.list_topics()[t] == 3
    assert broker.watermarks(t) == {0: (0, 0), 1: (0, 0), 2: (0, 0)}


def test_partition_count_of_checked_unchecked_and_missing_topics(broker: Broker) -> None:
    checked, other = name("count"), name("count-other")
    broker.ensure_topics({checked: 3, other: 2})
    assert broker.partition_count(checked) == 3
    assert broker.partition_count(name("count-none")) == 0
    fresh = type(broker)(broker.url)  # knows nothing yet: asks the broker
    try:
        assert fresh.partition_count(other) == 2
        fresh.ensure_compacted_topic(checked, 3600)  # exists already: it keeps its three partitions
        assert fresh.partition_count(checked) == 3
    finally:
        fresh.close()


def test_keyed_records_come_back_in_order(broker: Broker) -> None:
    t, g = name("order"), name("g")
    broker.ensure_topics({t: 3})
    p = broker.producer()
    for i in range(60):
        p.produce(t, f"k{i % 7}".encode(), f"{i}".encode(), headers=[("seq", str(i).encode()), ("x", b"\x00\xff")])
    assert p.flush(30) == 0
    p.close()
    assert sum(hi - lo for lo, hi in broker.watermarks(t).values()) == 60
    c = broker.consumer(g, [t])
    try:
        (records,) = drain([c], 60, patience(broker))
    finally:
        c.close()
    assert len(records) == 60
    by_part = check_contiguous(records)
    assert sum(map(len, by_part.values())) == 60
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        assert r.topic == t
        assert r.key is not None and r.partition == partition_for(r.key, 3)
        assert r.header("seq") == r.value and r.header("x") == b"\x00\xff"
        assert r.timestamp_ms > 0
        per_key[r.key].append(int(r.value or b""))
    for key, seq in per_key.items():
        assert seq == sorted(seq), f"records of key {key!r} out of order"


def test_same_key_same_partition_is_murmur2(broker: Broker) -> None:
    t = name("murmur")
    broker.ensure_topics({t: 6})
    p = broker.producer()
    delivered: list[tuple[Exception | None, Record | None]] = []
    keys = [f"key-{i}".encode() for i in range(40)] + [b"", b"a", b"foobar", uuid.uuid4().bytes]
    for key in keys * 2:
        p.produce(t, key, b"v", on_delivery=lambda err, rec: delivered.append((err, rec)))
    assert p.flush(30) == 0
    p.close()
    assert len(delivered) == 2 * len(keys)
    where: dict[bytes, set[int]] = defaultdict(set)
    for err, rec in delivered:
        assert err is None and rec is not None and rec.key is not None
        where[rec.key].add(rec.partition)
    for key in keys:
        assert where[key] == {partition_for(key, 6)}, f"key {key!r}"


def test_delivery_callback_reports_offsets(broker: Broker) -> None:
    t = name("delivery")
    broker.ensure_topics({t: 2})
    p = broker.producer()
    delivered: list[tuple[Exception | None, Record | None]] = []
    for i in range(20):
        p.produce(t, None, f"v{i}".encode(), on_delivery=lambda err, rec: delivered.append((err, rec)), partition=i % 2)
    assert p.flush(30) == 0
    p.close()
    assert len(delivered) == 20
    offsets: dict[int, list[int]] = defaultdict(list)
    for err, rec in delivered:
        assert err is None and rec is not None
        assert rec.topic == t
        offsets[rec.partition].append(rec.offset)
        assert rec.value == f"v{rec.offset * 2 + rec.partition}".encode()
    assert {part: sorted(o) for part, o in offsets.items()} == {0: list(range(10)), 1: list(range(10))}
    assert broker.watermarks(t) == {0: (0, 10), 1: (0, 10)}


def test_commit_shows_in_committed_and_lag(broker: Broker) -> None:
    t, g = name("commit"), name("g")
    broker.ensure_topics({t: 1})
    p = broker.producer()
    for i in range(10):
        p.produce(t, None, b"%d" % i, partition=0)
    assert p.flush(30) == 0
    p.close()
    c = broker.consumer(g, [t])
    try:
        (records,) = drain([c], 10, patience(broker))
        assert [r.offset for r in records] == list(range(10))
        assert broker.committed(g, t) == {}
        assert broker.lag(g, t) == {0: 10}
        c.commit({(t, 0): 6})
        assert broker.committed(g, t) == {0: 6}
        assert broker.lag(g, t) == {0: 4}
        c.commit({(t, 0): 10})
        assert broker.lag(g, t) == {0: 0}
    finally:
        c.close()


def test_next_member_resumes_from_commit(broker: Broker) -> None:
    t, g = name("resume"), name("g")
    broker.ensure_topics({t: 1})
    p = broker.producer()
    for i in range(10):
        p.produce(t, None, b"%d" % i, partition=0)
    p.flush(30)
    p.close()
    first = broker.consumer(g, [t])
    try:
        (records,) = drain([first], 10, patience(broker))
        assert len(records) == 10
        first.commit({(t, 0): 4})
    finally:
        first.close()
    second = broker.consumer(g, [t])
    try:
        (records,) = drain([second], 6, patience(broker))
        assert [r.offset for r in records] == list(range(4, 10))
        assert second.consume(10, 0.5) == []
    finally:
        second.close()


def test_two_members_split_partitions(broker: Broker) -> None:
    t, g = name("split"), name("g")
    broker.ensure_topics({t: 4})
    a = broker.consumer(g, [t])
    b = broker.consumer(g, [t])
    try:
        assert settle([a, b], {(t, p) for p in range(4)}, patience(broker)) == []
        assert not set(a.assignment()) & set(b.assignment())
        p = broker.producer()
        for i in range(200):
            p.produce(t, f"key{i}".encode(), b"%d" % i)
        p.flush(30)
        p.close()
        got_a, got_b = drain([a, b], 200, patience(broker))
        assert len(got_a) + len(got_b) == 200
        assert {(r.topic, r.partition) for r in got_a} <= set(a.assignment())
        assert {(r.topic, r.partition) for r in got_b} <= set(b.assignment())
        ids = [(r.partition, r.offset) for r in got_a + got_b]
        assert len(set(ids)) == 200
        assert sorted(int(r.value or b"") for r in got_a + got_b) == list(range(200))
    finally:
        a.close()
        b.close()


def test_revoke_commit_hands_position_to_new_member(broker: Broker) -> None:
    t, g = name("handover"), name("g")
    broker.ensure_topics({t: 4})
    p = broker.producer()
    for i in range(100):
        p.produce(t, f"key{i}".encode(), b"%d" % i)
    p.flush(30)
    p.close()
    done: dict[TopicPartition, int] = {}
    revoked: list[list[TopicPartition]] = []

    def on_revoke(parts: list[TopicPartition]) -> None:
        revoked.append(sorted(parts))
        a.commit({tp: done[tp] for tp in parts if tp in done})

    a = broker.consumer(g, [t], on_revoke=on_revoke)
    b: Consumer | None = None
    try:
        (got,) = drain([a], 100, patience(broker))
        for r in got:
            done[(r.topic, r.partition)] = r.offset + 1
        assert len(got) == 100
        b = broker.consumer(g, [t])
        late = settle([a, b], {(t, p) for p in range(4)}, patience(broker))
        assert late == [], "the new member re-read records the old one committed on revoke"
        assert revoked and set(revoked[-1]) >= set(b.assignment())
        lag = broker.lag(g, t)
        assert all(lag[part] == 0 for _, part in b.assignment())
        kept = a.assignment()
    finally:
        a.close()
        if b is not None:
            b.close()
    assert revoked[-1] == sorted(kept)


def test_pause_and_resume(broker: Broker) -> None:
    t, g = name("pause"), name("g")
    broker.ensure_topics({t: 2})
    c = broker.consumer(g, [t])
    try:
        settle([c], {(t, 0), (t, 1)}, patience(broker))
        c.pause([(t, 0)])
        p = broker.producer()
        for i in range(10):
            p.produce(t, None, b"%d" % i, partition=i % 2)
        p.flush(30)
        p.close()
        (got,) = drain([c], 5, patience(broker))
        got += c.consume(100, 0.5)
        assert {r.partition for r in got} == {1} and len(got) == 5
        c.resume([(t, 0)])
        (got,) = drain([c], 5, patience(broker))
        assert {r.partition for r in got} == {0} and [r.offset for r in got] == list(range(5))
    finally:
        c.close()


def test_produce_to_missing_topic_errors(broker: Broker) -> None:
    t = name("missing")
    p = broker.producer(**({"message.timeout.ms": 5000} if broker.url.startswith("kafka") else {}))
    errors: list[Exception] = []
    try:
        p.produce(t, b"k", b"v", on_delivery=lambda err, rec: errors.append(err) if err is not None else None)
        p.flush(60)
    except BrokerError as exc:
        assert t in str(exc)
        errors.append(exc)
    finally:
        try:
            p.close()
        except BrokerError:
            pass
    assert errors, f"producing to missing topic {t} did not surface an error"
    assert t not in broker.list_topics()


# -- local broker only -----------------------------------------------------------------------


def _produce_many(url: str, topic: str, who: int, count: int) -> None:
    """Child process: produce ``count`` messages in batches."""
    from taskq.brokers.local import LocalBroker

    broker = LocalBroker(url)
    p = broker.producer()
    for i in range(count):
        p.produce(topic, None, f"{who}:{i}".encode(), partition=i % 2)
        if i % 97 == 0:
            p.poll(0)
    p.flush()
    p.close()


def test_local_multiprocess_producers_keep_offsets_contiguous(tmp_path: os.PathLike[str]) -> None:
    from taskq.brokers.local import LocalBroker

    url = f"local://{tmp_path}/mp.db"
    broker = LocalBroker(url)
    t = name("mp")
    broker.ensure_topics({t: 2})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_produce_many, args=(url, t, who, 2000)) for who in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert broker.watermarks(t) == {0: (0, 2000), 1: (0, 2000)}
    c = broker.consumer(name("g"), [t])
    try:
        (records,) = drain([c], 4000, LOCAL_PATIENCE)
    finally:
        c.close()
    check_contiguous(records)
    values = {r.value for r in records}
    assert values == {f"{who}:{i}".encode() for who in range(2) for i in range(2000)}
    for who in range(2):  # each producer's own order survives within a partition
        for part in range(2):
            mine = [
                int((r.value or b"").split(b":")[1])
                for r in records
                if r.partition == part and (r.value or b"").startswith(b"%d:" % who)
            ]
            assert mine == sorted(mine)
    broker.close()


def _hold_partitions(url: str, topic: str, group: str, ready: multiprocessing.synchronize.Event) -> None:
    """Child process: own both partitions, read everything, commit offset 3 of each, then keep polling."""
    from taskq.brokers.local import LocalBroker

    c = LocalBroker(url).consumer(group, [topic], session_timeout=1.0)
    got: list[Record] = []
    while len(got) < 20:
        got.extend(c.consume(20 - len(got), 0.1))
    c.commit({(topic, 0): 3, (topic, 1): 3})
    ready.set()
    while True:
        c.consume(0, 0.05)  # heartbeats and hands over partitions, reads nothing more


def test_local_member_handover_and_sigkill_expiry(tmp_path: os.PathLike[str]) -> None:
    from taskq.brokers.local import LocalBroker

    url = f"local://{tmp_path}/kill.db"
    broker = LocalBroker(url)
    t, g = name("kill"), name("g")
    broker.ensure_topics({t: 2})
    p = broker.producer()
    for i in range(20):
        p.produce(t, None, b"%d" % i, partition=i % 2)
    p.close()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_partitions, args=(url, t, g, ready))
    child.start()
    try:
        assert ready.wait(20)
        assigned: list[list[TopicPartition]] = []
        c = broker.consumer(g, [t], on_assign=assigned.append, session_timeout=1.0)
        (first,) = drain([c], 7, LOCAL_PATIENCE)  # the live child releases one partition
        assert len(assigned) == 1 and len(c.assignment()) == 1
        (tp,) = assigned[0]
        assert [(r.partition, r.offset) for r in first] == [(tp[1], o) for o in range(3, 10)]
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        started = time.monotonic()
        (second,) = drain([c], 7, LOCAL_PATIENCE)  # the dead child's partition after its session expired
        assert time.monotonic() - started < 5
        assert len(assigned) == 2 and c.assignment() == [(t, 0), (t, 1)]
        assert [(r.partition, r.offset) for r in second] == [(1 - tp[1], o) for o in range(3, 10)]
        c.close()
    finally:
        child.kill()
        child.join()
    broker.close()


def test_local_url_forms(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from taskq.brokers.local import LocalBroker

    monkeypatch.chdir(tmp_path)
    rel = LocalBroker("local://rel.db")
    rel.ensure_topics({"a": 1})
    assert os.path.exists(os.path.join(tmp_path, "rel.db"))
    absolute = LocalBroker(f"local://{tmp_path}/rel.db")
    assert absolute.url == f"local://{tmp_path}/rel.db"
    assert absolute.list_topics() == {"a": 1}
    rel.close()
    absolute.close()


def test_local_close_that_cannot_write_leaves_by_session_expiry(tmp_path: os.PathLike[str]) -> None:
    """A leave the file refuses (disk full, a lock held too long) raised sqlite3's own error from close(): it
    escaped the forwarder's TaskqError handling, so that thread died without stopping its worker."""
    import sqlite3

    from taskq.brokers.local import LocalBroker

    path = f"{tmp_path}/leave.db"
    broker = LocalBroker(f"local://{path}")
    t, g = name("leave"), name("g")
    broker.ensure_topics({t: 1})
    c = broker.consumer(g, [t], session_timeout=1.0)
    c.consume(10, 0.5)
    assert c.assignment() == [(t, 0)]
    c._conn.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        c.close()  # must not raise sqlite3.OperationalError: database is locked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    other = broker.consumer(g, [t], session_timeout=1.0)
    deadline = time.monotonic() + LOCAL_PATIENCE
    while other.assignment() != [(t, 0)] and time.monotonic() < deadline:
        other.consume(10, 0.2)
    assert other.assignment() == [(t, 0)]  # the member that could not leave expired
    other.close()
    broker.close()
