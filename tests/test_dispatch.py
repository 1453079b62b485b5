"""Unit tests (no Kafka, no Redis): KeyedDispatcher: one record per key at a time, in order."""

from __future__ import annotations

from collections import deque

from taskq.brokers.base import Record
from taskq.worker import KeyedDispatcher
from tests.unit_support import as_record


def test_keyed_dispatcher_one_at_a_time_per_key_in_order() -> None:
    submitted: list[Record] = []
    dispatcher = KeyedDispatcher(submitted.append)
    a0, a1, a2 = (as_record(b"", [], offset=o, key=b"a") for o in (0, 1, 2))
    b3 = as_record(b"", [], offset=3, key=b"b")
    a_other_partition = as_record(b"", [], partition=1, offset=0, key=b"a")
    for r in (a0, a1, b3, a2, a_other_partition):
        dispatcher.dispatch(r)
    assert submitted == [a0, b3, a_other_partition]
    dispatcher.release(a0)
    assert submitted[-1] is a1 and len(submitted) == 4
    dispatcher.release(b3)
    assert len(submitted) == 4
    dispatcher.release(a1)
    assert submitted[-1] is a2
    dispatcher.release(a2)
    assert len(submitted) == 5
    a4 = as_record(b"", [], offset=4, key=b"a")
    dispatcher.dispatch(a4)  # key idle again: runs at once
    assert submitted[-1] is a4


def test_keyed_dispatcher_drop() -> None:
    submitted: list[Record] = []
    dispatcher = KeyedDispatcher(submitted.append)
    p0 = [as_record(b"", [], partition=0, offset=o, key=b"k") for o in range(3)]
    p1 = [as_record(b"", [], partition=1, offset=o, key=b"k") for o in range(2)]
    for r in p0 + p1:
        dispatcher.dispatch(r)
    assert submitted == [p0[0], p1[0]]
    assert dispatcher.drop({("t", 0)}) == p0[1:]
    dispatcher.release(p0[0])
    assert submitted == [p0[0], p1[0]]  # dropped records never start
    assert dispatcher.drop() == p1[1:]
    dispatcher.release(p1[0])
    assert submitted == [p0[0], p1[0]]


def test_keyed_dispatcher_forgets_keys_with_nothing_in_flight() -> None:
    """Per-key state lives only while a key has a record running or waiting: a worker that sees millions
    of distinct keys (every unkeyed task's key is its id) holds state for what is in flight only."""
    running: deque[Record] = deque()
    dispatcher = KeyedDispatcher(running.append)
    ran = 0
    for i in range(10_000):
        key = f"k{i}".encode()
        dispatcher.dispatch(as_record(b"", [], offset=i, key=key))
        if i % 10 == 0:
            dispatcher.dispatch(as_record(b"", [], offset=i, key=key))  # waits behind the first
        while len(running) > 1:  # the oldest finishes, as the finisher releases records
            dispatcher.release(running.popleft())
            ran += 1
        assert len(dispatcher) <= 3
    while running:
        dispatcher.release(running.popleft())
        ran += 1
    assert len(dispatcher) == 0
    assert ran == 11_000  # every record ran, the waiting ones after their key's first


def test_keyed_dispatcher_forgets_keys_after_drop() -> None:
    submitted: list[Record] = []
    dispatcher = KeyedDispatcher(submitted.append)
    records = [as_record(b"", [], offset=o, key=b"k") for o in range(3)]
    for r in records:
        dispatcher.dispatch(r)
    assert dispatcher.drop() == records[1:]
    assert len(dispatcher) == 1  # the running record still holds its key
    dispatcher.release(records[0])
    assert len(dispatcher) == 0
