"""Fuzzing a running worker with raw records: every record is run as a task or dead-lettered, once,
and the worker keeps running. Also: payloads over the 1 MB message limit are refused at send.

Records are produced straight onto a task topic (no taskq encoding): random bytes, truncated or
misshapen JSON, missing, duplicated or garbage headers, unknown content types, pickle payloads
(never accepted: unpickling one would set a flag). Each record carries a unique key to follow it.
"""

from __future__ import annotations

import collections
import itertools
import json
import pickle
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from taskq import BrokerError, Taskq
from taskq.dlq import read_topic
from tests.support import worker_thread

UNPICKLED: list[str] = []


def _unpickled(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Bomb:
    """Unpickling this calls ``_unpickled``: a worker that loads pickle it did not accept shows here."""

    def __reduce__(self) -> tuple:
        return (_unpickled, ("loaded",))


# --------------------------------------------------------------------------- strategies

JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
JSON_ANY = st.recursive(JSON_LEAF,
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=8)
CONTENT_TYPES = st.sampled_from(["application/json", "application/x-python-serialize", "text/plain", "",
                                 "application/JSON", "application/json; charset=utf-8"]) | st.text(max_size=16)
HEADER_NAMES = st.sampled_from(["id", "task", "content-type", "attempts", "first-failure", "eta", "origin-topic",
                                "x-trace", "x-"]) | st.text(max_size=10)
HEADER_VALUES = (st.binary(max_size=24) | st.none() | st.text(max_size=16).map(str.encode)
                 | st.integers(-(10**30), 10**30).map(lambda i: str(i).encode())
                 | st.floats().map(lambda f: repr(f).encode()))


@st.composite
def raw_value(draw: st.DrawFn) -> bytes | None:
    args = draw(st.lists(JSON_ANY, max_size=3))
    kwargs = draw(st.dictionaries(st.text(max_size=8), JSON_ANY, max_size=3))
    valid = json.dumps([args, kwargs]).encode()
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "bytes", "shape", "none", "pickle"]))
    if kind == "valid":
        return valid
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "shape":
        return json.dumps(draw(JSON_ANY)).encode()
    if kind == "pickle":
        return pickle.dumps([[Bomb()], {}])
    return None


@st.composite
def raw_record(draw: st.DrawFn, task_name: str) -> tuple[bytes | None, list[tuple[str, bytes | None]]]:
    """(value, headers): a taskq message, mutated."""
    headers: list[tuple[str, bytes | None]] = [("id", b""), ("task", task_name.encode()),
                                               ("content-type", b"application/json")]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "set", "add", "dup"]))
        name = draw(HEADER_NAMES)
        if op == "drop":
            headers = [h for h in headers if h[0] != name]
        elif op == "set":
            if name == "task" and draw(st.booleans()):
                value = draw(st.sampled_from([task_name, "nope.task", ""])).encode()
            elif name == "content-type" and draw(st.booleans()):
                value = draw(CONTENT_TYPES).encode()
            else:
                value = draw(HEADER_VALUES)
            headers = [h for h in headers if h[0] != name] + [(name, value)]
        elif op == "add":
            headers.append((name, draw(HEADER_VALUES)))
        else:
            headers += [h for h in headers if h[0] == name]
    return draw(raw_value()), headers


# --------------------------------------------------------------------------- the rig


def fuzz(app: Taskq, prefix: str, examples: int, wait: float) -> None:
    """Produce fuzzed records to a task topic of ``app`` and follow each to its end."""
    executed: collections.Counter[bytes] = collections.Counter()
    lock = threading.Lock()

    @app.task(name=f"{prefix}.target", bind=True)
    def target(self, *args: object, **kwargs: object) -> None:
        if len(args) % 2:  # fails for good (no autoretry): FAILURE and a dead letter
            raise ValueError("an odd number of arguments")
        with lock:
            executed[self.request.key] += 1

    @app.task(name=f"{prefix}.ping")
    def ping(n: int) -> int:
        return n + 1

    topic, dlq = target.topic, app.dlq_topic(target.topic)
    app.ensure_topics({topic: 6, dlq: 6, ping.topic: 6, app.dlq_topic(ping.topic): 6})
    tags = (f"fz-{i}".encode() for i in itertools.count())
    sent: list[bytes] = []
    dead: collections.Counter[bytes] = collections.Counter()
    UNPICKLED.clear()
    with worker_thread(app, concurrency=4, forward_delayed=False) as (worker, thread):
        producer = app.broker.producer()
        reader = app.broker.consumer(f"{prefix}.dlq-reader", [dlq])
        try:
            # no shrinking: a stuck worker makes every shrink step wait; the failure shows the batch
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate])
            @given(batch=st.lists(raw_record(target.name), min_size=1, max_size=4))
            # an origin-topic header on a task topic once sent dead letters to "<header>.dlq" (blocking
            # the worker when that topic does not exist, crashing its finisher when not UTF-8)
            @example(batch=[(b"garbage", [("id", b""), ("task", target.name.encode()), ("origin-topic", b"nowhere")]),
                            (None, [("task", b"nope"), ("origin-topic", b"\xff\xfe")])])
            def one_batch(batch: list[tuple[bytes | None, list[tuple[str, bytes | None]]]]) -> None:
                keys = []
                for value, headers in batch:
                    key = next(tags)
                    headers = [(k, key + b"-" + v if k == "id" and v is not None else v) for k, v in headers]
                    producer.produce(topic, key, value, headers)
                    keys.append(key)
                sent.extend(keys)
                assert producer.flush(30) == 0
                deadline = time.monotonic() + wait
                while True:
                    for record in reader.consume(500, 0.05):
                        dead[record.key] += 1
                    with lock:
                        ended = {k: executed[k] + dead[k] for k in keys}
                    if all(ended.values()) or time.monotonic() > deadline:
                        break
                assert all(n == 1 for n in ended.values()), (ended, batch)
                assert thread.is_alive(), "the worker stopped"

            one_batch()
        finally:
            reader.close()
        # the worker still runs valid tasks
        assert ping.delay(41).get(timeout=wait) == 42
        stats = worker.stats
    # every record: succeeded once or dead-lettered once, never both, never neither
    records = list(read_topic(app, dlq))
    letters = collections.Counter(r.key for r in records)
    reasons = collections.Counter(r.header("dead-reason") for r in records)
    assert set(letters) | set(executed) == set(sent)
    assert not set(letters) & set(executed)
    assert max(letters.values(), default=1) == 1 and max(executed.values(), default=1) == 1
    assert UNPICKLED == [], "the worker unpickled a payload it does not accept"
    assert stats.received >= len(sent)
    assert reasons == +collections.Counter({b"rejected": stats.rejected, b"dead": stats.dead}), reasons
    print(f"\nFUZZ {app.broker_url.split(':')[0]}: records={len(sent)} succeeded={len(executed)} "
          f"dead_lettered={len(letters)} (rejected={stats.rejected} failed={stats.dead})", flush=True)


def test_fuzz_raw_records_kafka(kafka_url: str, redis_clean: str, unique: str) -> None:
    app = Taskq(f"fz{unique}", broker=kafka_url, backend=redis_clean, topic_prefix=f"fz{unique}.")
    try:
        fuzz(app, f"fz{unique}", examples=50, wait=20)
    finally:
        app.close()


def test_fuzz_raw_records_local(tmp_path: Path, unique: str) -> None:
    app = Taskq(f"fz{unique}", local_path=str(tmp_path / "q.db"))
    try:
        fuzz(app, f"fz{unique}", examples=50, wait=15)
    finally:
        app.close()


# --------------------------------------------------------------------------- the 1 MB limit

BIG = "x" * 1_100_000  # over the 1 MB (1,000,000 byte) message limit once encoded


def assert_refused_at_send(app: Taskq, prefix: str) -> None:
    @app.task(name=f"{prefix}.big")
    def big(data: str) -> int:
        return len(data)

    app.ensure_topic(big.topic, big.partitions)
    before = app.broker.watermarks(big.topic)
    with pytest.raises(BrokerError, match="(?i)too large"):
        big.delay(BIG)
    app.flush()  # nothing pending, nothing failed later
    assert app.broker.watermarks(big.topic) == before, "the oversized message was produced"
    big.delay("small")
    app.flush()
    assert sum(hi for _lo, hi in app.broker.watermarks(big.topic).values()) == \
        sum(hi for _lo, hi in before.values()) + 1


def test_huge_payload_refused_at_send_kafka(kafka_url: str, redis_clean: str, unique: str) -> None:
    app = Taskq(f"big{unique}", broker=kafka_url, backend=redis_clean, topic_prefix=f"big{unique}.")
    try:
        assert_refused_at_send(app, f"big{unique}")
    finally:
        app.close()


def test_huge_payload_refused_at_send_local(tmp_path: Path, unique: str) -> None:
    app = Taskq(f"big{unique}", local_path=str(tmp_path / "q.db"))
    try:
        assert_refused_at_send(app, f"big{unique}")
    finally:
        app.close()
