"""The local producer: messages queued in memory, appended to the file in one transaction per batch.

Offsets stay contiguous under concurrent producers (processes too): each batch reads and bumps the
partitions' ``next_offset`` inside ``BEGIN IMMEDIATE``. Delivery is synchronous, so callbacks are
served on the next ``poll`` or ``flush``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from taskq.brokers.base import DeliveryCallback, Headers, Producer, Record
from taskq.brokers.local.store import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    Txn,
    connect,
    encode_headers,
    to_bytes,
    topic_map,
)
from taskq.errors import BrokerError, MessageTooLarge
from taskq.partitioner import partition_for


class LocalProducer(Producer):
    """Queues messages in memory; one transaction per batch, on ``poll``/``flush`` or when the batch is full."""

    def __init__(self, path: str, batch_size: int = MAX_BATCH) -> None:
        self._path = path
        self._pid = os.getpid()
        self._conn = connect(path)
        self._lock = threading.RLock()
        self._batch_size = max(1, batch_size)
        self._queue: list[
            tuple[str, int, int, bytes | None, bytes | None, bytes | None, int, DeliveryCallback | None, Headers]
        ] = []
        self._queued_bytes = 0
        self._done: list[tuple[DeliveryCallback | None, Exception | None, Record | None]] = []
        self._topics: dict[str, tuple[int, int]] = {}
        self._rr: dict[str, int] = {}
        self._closed = False

    def _topic(self, topic: str) -> tuple[int, int]:
        meta = self._topics.get(topic)
        if meta is None:
            self._topics = topic_map(self._conn)
            meta = self._topics.get(topic)
            if meta is None:
                raise BrokerError(
                    f"unknown topic {topic!r} in local broker {self._path!r}; create it first (ensure_topics)"
                )
        return meta

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message; raises BrokerError for an unknown topic or partition."""
        key = to_bytes(key)
        value = to_bytes(value)
        if headers:
            headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
        if size > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"message of {size} bytes for {topic} is too large: the limit is {MAX_MESSAGE_BYTES} "
                              "bytes, as on Kafka; pass a reference to the payload (an object-store key or URL) "
                              "instead of the payload")
        with self._lock:
            if self._closed:
                raise BrokerError("producer is closed; create a new one with broker.producer()")
            tid, n = self._topic(topic)
            if partition is None or partition < 0:
                if key is not None:
                    partition = partition_for(key, n)
                else:
                    partition = self._rr.get(topic, 0) % n
                    self._rr[topic] = partition + 1
            elif partition >= n:
                self._topics.pop(topic, None)
                tid, n = self._topic(topic)
                if partition >= n:
                    raise BrokerError(f"topic {topic!r} has {n} partitions, cannot produce to partition {partition}")
            self._queue.append(
                (
                    topic,
                    tid,
                    partition,
                    key,
                    value,
                    encode_headers(headers),
                    time.time_ns() // 1_000_000,
                    on_delivery,
                    headers or [],
                )
            )
            self._queued_bytes += len(value or b"") + len(key or b"")
            if len(self._queue) >= self._batch_size or self._queued_bytes >= MAX_BATCH_BYTES:
                self._write()

    def _write(self) -> None:
        """Append the queued batch in one transaction; outcomes go to the callback list."""
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        if not batch:
            return
        if os.getpid() != self._pid:  # forked: never share a SQLite connection with the parent
            self._pid, self._conn = os.getpid(), connect(self._path)
        by_part: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(batch):
            by_part.setdefault((item[1], item[2]), []).append(i)
        offsets = [0] * len(batch)
        conn = self._conn
        try:
            with Txn(conn):
                for (tid, part), idxs in by_part.items():
                    row = conn.execute(
                        "SELECT next_offset FROM partitions WHERE tid=? AND partition=?", (tid, part)
                    ).fetchone()
                    if row is None:
                        raise BrokerError(f"partition {part} of topic id {tid} vanished from {self._path!r}")
                    base = row[0]
                    rows = []
                    for j, i in enumerate(idxs):
                        it = batch[i]
                        offsets[i] = base + j
                        rows.append((tid, part, base + j, it[3], it[4], it[5], it[6]))
                    conn.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?)", rows)
                    conn.execute(
                        "UPDATE partitions SET next_offset=? WHERE tid=? AND partition=?", (base + len(idxs), tid, part)
                    )
        except (sqlite3.Error, BrokerError) as exc:
            err = (
                exc
                if isinstance(exc, BrokerError)
                else BrokerError(f"local broker write to {self._path!r} failed: {exc}")
            )
            if not any(it[7] is not None for it in batch):
                raise err from (None if err is exc else exc)
            self._done.extend((it[7], err, None) for it in batch)  # _serve raises for those without callback
            return
        for i, it in enumerate(batch):
            if it[7] is not None:
                self._done.append((it[7], None, Record(it[0], it[2], offsets[i], it[3], it[4], it[8], it[6])))

    def _serve(self) -> int:
        done, self._done = self._done, []
        first_error: Exception | None = None
        for cb, err, rec in done:
            if cb is not None:
                cb(err, rec)
            elif err is not None and first_error is None:
                first_error = err
        if first_error is not None:
            raise first_error
        return len(done)

    def poll(self, timeout: float = 0.0) -> int:
        """Write the queued batch and serve delivery callbacks (never blocks: delivery is synchronous)."""
        with self._lock:
            self._write()
            return self._serve()

    def flush(self, timeout: float | None = None) -> int:
        """Write everything queued and serve callbacks; always returns 0."""
        with self._lock:
            self._write()
            self._serve()
            return len(self._queue)

    def close(self) -> None:
        """Flush and close the connection."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._conn.close()

    def __len__(self) -> int:
        return len(self._queue)
