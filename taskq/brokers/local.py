"""The embedded default broker: Kafka semantics on top of one SQLite file.

Producers and consumers in different processes share topics through the file (WAL mode,
``busy_timeout``). Tables:

``topics(tid, name, partitions)``
    one row per topic.
``partitions(tid, partition, next_offset)``
    the high watermark of every partition; appends read and bump it inside ``BEGIN IMMEDIATE``
    so offsets stay contiguous under concurrent producers.
``records(tid, partition, offset, key, value, headers, ts)``
    the log (``WITHOUT ROWID``, clustered by ``(tid, partition, offset)``); headers are marshalled.
``groups(name, generation)``
    a counter bumped on every membership change (join, leave, expiry) and topic creation.
``members(grp, member, topics, heartbeat, session_timeout)``
    live group members with their subscriptions and wall-clock heartbeat.
``owners(grp, tid, partition, member)``
    which member currently reads a partition (the hand-over lock).
``commits(grp, tid, partition, offset)``
    committed offsets (the next offset to read).

Rebalancing: inside ``consume()`` a member compares the group generation with the one it last
saw. On a change it reads the member list (one snapshot), computes the round-robin assignment
every member computes identically, calls ``on_revoke`` for partitions it must give up and only
then deletes its ``owners`` rows. Partitions it gains are claimed once their ``owners`` row is
free (released, or held by a member that left / whose heartbeat expired), then ``on_assign``
is called and reading starts at the committed offset (else 0). Heartbeats are written from
``consume()`` and ``commit()``; every heartbeat also evicts members whose session expired.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence

from taskq.brokers.base import (
    AssignmentCallback,
    Broker,
    Consumer,
    DeliveryCallback,
    Headers,
    Producer,
    Record,
    TopicPartition,
)
from taskq.errors import BrokerError, ConfigError, MessageTooLarge
from taskq.partitioner import partition_for

log = logging.getLogger(__name__)

SCHEME = "local://"
BUSY_TIMEOUT_MS = 30_000
DEFAULT_SESSION_TIMEOUT = 10.0
MAX_BATCH = 5_000
MAX_MESSAGE_BYTES = 1_000_000  # Kafka's producer default (message.max.bytes)
MAX_BATCH_BYTES = 8 << 20
MIN_SLEEP = 0.001
MAX_SLEEP = 0.02
LEGAL_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    tid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    tid INTEGER NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tid, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    tid INTEGER NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB, headers BLOB, ts INTEGER NOT NULL,
    PRIMARY KEY (tid, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,
    heartbeat REAL NOT NULL, session_timeout REAL NOT NULL, PRIMARY KEY (grp, member));
CREATE TABLE IF NOT EXISTS owners (
    grp TEXT NOT NULL, tid INTEGER NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (grp, tid, partition));
CREATE TABLE IF NOT EXISTS commits (
    grp TEXT NOT NULL, tid INTEGER NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, tid, partition)) WITHOUT ROWID;
"""


def path_from_url(url: str) -> str:
    """``local:///abs/file.db`` -> ``/abs/file.db``; ``local://rel.db`` -> ``rel.db``; plain paths pass through."""
    if url.startswith(SCHEME):
        path = url[len(SCHEME) :].split("?", 1)[0]
    elif url.startswith("local:"):
        path = url[len("local:") :]
    else:
        path = url
    if not path:
        raise ConfigError(f"local broker URL {url!r} has no file path; use local:///abs/path/to/file.db")
    return path


def connect(path: str) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL, ``busy_timeout`` and the schema in place."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-16000")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='commits'").fetchone() is None:
            conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
    except sqlite3.Error as exc:
        raise BrokerError(f"cannot open local broker database {path!r}: {exc}; check the path and permissions") from exc
    return conn


class Txn:
    """``with Txn(conn):`` runs a ``BEGIN IMMEDIATE`` transaction, committed on success, rolled back on error."""

    __slots__ = ("conn", "mode")

    def __init__(self, conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> None:
        self.conn = conn
        self.mode = mode

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(f"BEGIN {self.mode}")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def encode_headers(headers: Headers | None) -> bytes | None:
    """Headers as stored in the ``records`` table (None when empty)."""
    return marshal.dumps(headers) if headers else None


def decode_headers(blob: bytes | None) -> Headers:
    """Inverse of :func:`encode_headers`."""
    return marshal.loads(blob) if blob else []


def to_bytes(data: bytes | str | None) -> bytes | None:
    """Accept ``str`` like confluent-kafka does (UTF-8)."""
    return data.encode() if isinstance(data, str) else data


def number_option(options: dict[str, object], name: str) -> float | None:
    """``options[name]`` as a float (None when absent); ConfigError when it is not a number."""
    value = options.get(name)
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}={value!r} must be a number") from None


def topic_map(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """Topic name -> (tid, partition count)."""
    return {name: (tid, n) for tid, name, n in conn.execute("SELECT tid, name, partitions FROM topics")}


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


class LocalConsumer(Consumer):
    """A consumer group member; see the module docstring for the rebalance protocol."""

    def __init__(
        self,
        path: str,
        group: str,
        topics: Sequence[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        heartbeat_interval: float | None = None,
    ) -> None:
        if not group:
            raise ConfigError("consumer group name must not be empty")
        if isinstance(topics, str):
            topics = [topics]
        self._path = path
        self._conn = connect(path)
        self._group = group
        self._topics = sorted(set(topics))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._session_timeout = float(session_timeout)
        self._hb_interval = float(heartbeat_interval) if heartbeat_interval else min(1.0, self._session_timeout / 4)
        self.member_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        self._generation = -1
        self._owned: set[TopicPartition] = set()
        self._pending: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._tids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._next_hb = 0.0
        self._rotate = 0
        self._closed = False
        self._joined = False

    # -- group membership -------------------------------------------------------------------

    def _join(self) -> None:
        """Register as a member (on the first ``consume``, like Kafka's subscribe-then-poll)."""
        with Txn(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO groups(name, generation) VALUES (?, 0)", (self._group,))
            c.execute(
                "INSERT OR REPLACE INTO members VALUES (?,?,?,?,?)",
                (self._group, self.member_id, json.dumps(self._topics), time.time(), self._session_timeout),
            )
            self._evict_expired(c)
            c.execute("UPDATE groups SET generation=generation+1 WHERE name=?", (self._group,))
        self._joined = True
        self._next_hb = time.monotonic() + self._hb_interval

    def _evict_expired(self, c: sqlite3.Connection) -> bool:
        """Delete members whose session expired and their ownerships (inside a write transaction)."""
        cur = c.execute(
            "DELETE FROM members WHERE grp=? AND heartbeat + session_timeout < ?", (self._group, time.time())
        )
        if cur.rowcount > 0:
            c.execute(
                "DELETE FROM owners WHERE grp=? AND member NOT IN (SELECT member FROM members WHERE grp=?)",
                (self._group, self._group),
            )
            c.execute("UPDATE groups SET generation=generation+1 WHERE name=?", (self._group,))
            return True
        return False

    def _heartbeat(self) -> None:
        """Refresh our heartbeat, evict expired members, rejoin if we were evicted ourselves."""
        rejoined = False
        with Txn(self._conn) as c:
            cur = c.execute(
                "UPDATE members SET heartbeat=? WHERE grp=? AND member=?", (time.time(), self._group, self.member_id)
            )
            if cur.rowcount == 0:
                c.execute(
                    "INSERT INTO members VALUES (?,?,?,?,?)",
                    (self._group, self.member_id, json.dumps(self._topics), time.time(), self._session_timeout),
                )
                c.execute("UPDATE groups SET generation=generation+1 WHERE name=?", (self._group,))
                rejoined = True
            self._evict_expired(c)
            still = set()
            if rejoined and self._owned:
                for tid, part in c.execute(
                    "SELECT tid, partition FROM owners WHERE grp=? AND member=?", (self._group, self.member_id)
                ):
                    still.add((self._names.get(tid, ""), part))
        self._next_hb = time.monotonic() + self._hb_interval
        if rejoined:
            lost = self._owned - still
            if lost:
                log.warning("member %s of group %s timed out and lost %s", self.member_id, self._group, sorted(lost))
                self._owned -= lost
                for tp in lost:
                    self._positions.pop(tp, None)
                if self._on_revoke is not None:
                    self._on_revoke(sorted(lost))

    def _target(self, c: sqlite3.Connection) -> tuple[int, set[TopicPartition]]:
        """Group generation and our share of the round-robin assignment (one read snapshot)."""
        with Txn(c, "DEFERRED"):
            gen = c.execute("SELECT generation FROM groups WHERE name=?", (self._group,)).fetchone()[0]
            members = [
                (m, set(json.loads(t)))
                for m, t in c.execute("SELECT member, topics FROM members WHERE grp=? ORDER BY member", (self._group,))
            ]
            topics = topic_map(c)
        self._tids = {name: tid for name, (tid, _) in topics.items()}
        self._names = {tid: name for name, tid in self._tids.items()}
        mine: set[TopicPartition] = set()
        if not members:
            return gen, mine
        cursor = 0
        for name in sorted(set().union(*(t for _, t in members))):
            if name not in topics:
                continue
            for part in range(topics[name][1]):
                # RoundRobinAssignor: next member (circularly) subscribed to this topic
                for _ in range(len(members)):
                    member, subs = members[cursor % len(members)]
                    cursor += 1
                    if name in subs:
                        if member == self.member_id:
                            mine.add((name, part))
                        break
        return gen, mine

    def _rebalance(self) -> None:
        """Apply a new generation: revoke (callback first, then release), then try to claim."""
        gen, target = self._target(self._conn)
        revoke = self._owned - target
        if revoke:
            try:
                if self._on_revoke is not None:
                    self._on_revoke(sorted(revoke))
            finally:
                with Txn(self._conn) as c:
                    c.executemany(
                        "DELETE FROM owners WHERE grp=? AND tid=? AND partition=? AND member=?",
                        [(self._group, self._tids.get(t, -1), p, self.member_id) for t, p in revoke],
                    )
                self._owned -= revoke
                for tp in revoke:
                    self._positions.pop(tp, None)
        self._generation = gen
        self._pending = target - self._owned
        if self._pending:
            self._claim()

    def _claim(self) -> None:
        """Take the pending partitions whose previous owner is gone; ``on_assign`` the new ones."""
        c = self._conn
        pend = [(t, p, self._tids[t]) for t, p in self._pending if t in self._tids]
        owners = {
            (tid, part): m
            for tid, part, m in c.execute("SELECT tid, partition, member FROM owners WHERE grp=?", (self._group,))
        }
        live = {m for (m,) in c.execute("SELECT member FROM members WHERE grp=?", (self._group,))}
        if not any(
            owners.get((tid, p)) in (None, self.member_id) or owners[(tid, p)] not in live for _, p, tid in pend
        ):
            return
        claimed: list[TopicPartition] = []
        with Txn(c) as c:
            gen = c.execute("SELECT generation FROM groups WHERE name=?", (self._group,)).fetchone()[0]
            if gen != self._generation:
                return  # the next consume() rebalances again
            live = {m for (m,) in c.execute("SELECT member FROM members WHERE grp=?", (self._group,))}
            if self.member_id not in live:
                return
            for t, p, tid in pend:
                row = c.execute(
                    "SELECT member FROM owners WHERE grp=? AND tid=? AND partition=?", (self._group, tid, p)
                ).fetchone()
                if row is None or row[0] == self.member_id or row[0] not in live:
                    c.execute("INSERT OR REPLACE INTO owners VALUES (?,?,?,?)", (self._group, tid, p, self.member_id))
                    committed = c.execute(
                        "SELECT offset FROM commits WHERE grp=? AND tid=? AND partition=?", (self._group, tid, p)
                    ).fetchone()
                    self._positions[(t, p)] = committed[0] if committed else 0
                    claimed.append((t, p))
        if claimed:
            self._owned.update(claimed)
            self._pending.difference_update(claimed)
            if self._on_assign is not None:
                self._on_assign(sorted(claimed))

    def _maintain(self) -> None:
        """Join, heartbeat when due, rebalance when the generation moved, retry pending claims."""
        if not self._joined:
            self._join()
        elif time.monotonic() >= self._next_hb:
            self._heartbeat()
        row = self._conn.execute("SELECT generation FROM groups WHERE name=?", (self._group,)).fetchone()
        if row is None or row[0] != self._generation:
            self._rebalance()
        elif self._pending:
            self._claim()

    # -- reading ------------------------------------------------------------------------------

    def _fetch(self, max_records: int) -> list[Record]:
        active = [tp for tp in self._owned if tp not in self._paused]
        if not active or max_records <= 0:
            return []
        c = self._conn
        highs: dict[tuple[int, int], int] = {}
        tids = sorted({self._tids[t] for t, _ in active})
        for tid in tids:
            for part, high in c.execute("SELECT partition, next_offset FROM partitions WHERE tid=?", (tid,)):
                highs[(tid, part)] = high
        ready = []
        for tp in active:
            tid = self._tids[tp[0]]
            if highs.get((tid, tp[1]), 0) > self._positions[tp]:
                ready.append((tp, tid))
        if not ready:
            return []
        ready.sort()
        self._rotate = (self._rotate + 1) % len(ready)
        ready = ready[self._rotate :] + ready[: self._rotate]
        out: list[Record] = []
        for (topic, part), tid in ready:
            want = max_records - len(out)
            if want <= 0:
                break
            pos = self._positions[(topic, part)]
            rows = c.execute(
                "SELECT offset, key, value, headers, ts FROM records "
                "WHERE tid=? AND partition=? AND offset>=? ORDER BY offset LIMIT ?",
                (tid, part, pos, want),
            ).fetchall()
            if rows:
                out.extend(Record(topic, part, o, k, v, decode_headers(h), ts) for o, k, v, h, ts in rows)
                self._positions[(topic, part)] = rows[-1][0] + 1
        return out

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` s (short sleeps, backing off to 20 ms)."""
        deadline = time.monotonic() + max(0.0, timeout)
        delay = MIN_SLEEP
        while True:
            with self._lock:
                if self._closed:
                    raise BrokerError("consumer is closed; create a new one with broker.consumer()")
                try:
                    self._maintain()
                    records = self._fetch(max_records)
                except sqlite3.Error as exc:
                    raise BrokerError(f"local broker read from {self._path!r} failed: {exc}") from exc
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_SLEEP)

    def commit(self, offsets: dict[TopicPartition, int], asynchronous: bool = False) -> None:
        """Store the next offset to read per partition; partitions this member does not own are skipped."""
        if not offsets:
            return
        with self._lock:
            if self._closed:
                raise BrokerError("consumer is closed; commit before close()")
            skipped = []
            try:
                with Txn(self._conn) as c:
                    mine = {
                        (tid, p)
                        for tid, p in c.execute(
                            "SELECT tid, partition FROM owners WHERE grp=? AND member=?", (self._group, self.member_id)
                        )
                    }
                    rows = []
                    for (topic, part), off in offsets.items():
                        tid = self._tids.get(topic)
                        if tid is None or (tid, part) not in mine:
                            skipped.append((topic, part))
                        else:
                            rows.append((self._group, tid, part, int(off)))
                    c.executemany("INSERT OR REPLACE INTO commits VALUES (?,?,?,?)", rows)
                    c.execute(
                        "UPDATE members SET heartbeat=? WHERE grp=? AND member=?",
                        (time.time(), self._group, self.member_id),
                    )
            except sqlite3.Error as exc:
                raise BrokerError(f"local broker commit to {self._path!r} failed: {exc}") from exc
            if skipped:
                log.warning(
                    "group %s: not committing %s, member %s does not own them", self._group, skipped, self.member_id
                )

    def assignment(self) -> list[TopicPartition]:
        """Partitions this member currently owns (reads from)."""
        with self._lock:
            return sorted(self._owned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning records from ``partitions``."""
        with self._lock:
            self._paused.update((t, p) for t, p in partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Return records from ``partitions`` again."""
        with self._lock:
            self._paused.difference_update((t, p) for t, p in partitions)

    def close(self) -> None:
        """Revoke (callback), release partitions and leave the group."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._owned and self._on_revoke is not None:
                    self._on_revoke(sorted(self._owned))
            finally:
                self._closed = True
                try:
                    if self._joined:
                        with Txn(self._conn) as c:
                            c.execute("DELETE FROM owners WHERE grp=? AND member=?", (self._group, self.member_id))
                            c.execute("DELETE FROM members WHERE grp=? AND member=?", (self._group, self.member_id))
                            c.execute("UPDATE groups SET generation=generation+1 WHERE name=?", (self._group,))
                finally:
                    self._owned.clear()
                    self._conn.close()


class LocalBroker(Broker):
    """Kafka-like broker in one SQLite file, shared by every process that opens the same path."""

    def __init__(self, path: str) -> None:
        self.path = path_from_url(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.url = SCHEME + self.path
        self._pid = -1
        self._admin: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> LocalBroker:
        """Build from ``local:///abs/path.db`` or ``local://relative.db``."""
        return cls(url)

    def _conn(self) -> sqlite3.Connection:
        if self._admin is None or self._pid != os.getpid():
            self._admin, self._pid = connect(self.path), os.getpid()
        return self._admin

    def producer(self, **options: object) -> LocalProducer:
        """A new producer (option ``batch_size``: messages queued before an automatic write)."""
        return LocalProducer(self.path, batch_size=int(number_option(options, "batch_size") or MAX_BATCH))

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
        **options: object,
    ) -> LocalConsumer:
        """A new member of ``group``; options ``session_timeout`` (s, default 10) and ``heartbeat_interval``."""
        session = number_option(options, "session_timeout")
        if session is None:
            session_ms = number_option(options, "session.timeout.ms")
            session = session_ms / 1000 if session_ms is not None else DEFAULT_SESSION_TIMEOUT
        return LocalConsumer(
            self.path,
            group,
            topics,
            on_assign,
            on_revoke,
            session_timeout=session,
            heartbeat_interval=number_option(options, "heartbeat_interval"),
        )

    def ensure_topics(self, topics: dict[str, int], replication: int = 1) -> None:
        """Create missing topics (existing ones keep their partition count); wakes up subscribed groups."""
        for name, n in topics.items():
            if not name or len(name) > 249 or not set(name) <= LEGAL_TOPIC_CHARS or name in (".", ".."):
                raise ConfigError(f"illegal topic name {name!r}: use at most 249 of [a-zA-Z0-9._-]")
            if int(n) < 1:
                raise ConfigError(f"topic {name!r} needs at least 1 partition, got {n}")
        with self._lock:
            try:
                with Txn(self._conn()) as c:
                    existing = topic_map(c)
                    created = False
                    for name, n in topics.items():
                        if name in existing:
                            continue
                        tid = c.execute("INSERT INTO topics(name, partitions) VALUES (?,?)", (name, int(n))).lastrowid
                        c.executemany("INSERT INTO partitions VALUES (?,?,0)", [(tid, p) for p in range(int(n))])
                        created = True
                    if created:
                        c.execute("UPDATE groups SET generation=generation+1")
            except sqlite3.Error as exc:
                raise BrokerError(f"cannot create topics in {self.path!r}: {exc}") from exc

    def list_topics(self) -> dict[str, int]:
        """Topic name -> partition count."""
        with self._lock:
            return {name: n for name, (_, n) in topic_map(self._conn()).items()}

    def _tid(self, topic: str) -> int:
        row = self._conn().execute("SELECT tid FROM topics WHERE name=?", (topic,)).fetchone()
        if row is None:
            raise BrokerError(f"unknown topic {topic!r} in local broker {self.path!r}; create it first (ensure_topics)")
        return row[0]

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """Partition -> (low, high): low is the first stored offset (0 unless deleted), high the next offset."""
        with self._lock:
            c = self._conn()
            tid = self._tid(topic)
            out = {}
            for part, high in c.execute(
                "SELECT partition, next_offset FROM partitions WHERE tid=? ORDER BY partition", (tid,)
            ):
                low = c.execute(
                    "SELECT offset FROM records WHERE tid=? AND partition=? ORDER BY offset LIMIT 1", (tid, part)
                ).fetchone()
                out[part] = (low[0] if low else high, high)
            return out

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Partition -> committed offset of ``group`` (uncommitted partitions left out)."""
        with self._lock:
            c = self._conn()
            tid = self._tid(topic)
            return dict(
                c.execute(
                    "SELECT partition, offset FROM commits WHERE grp=? AND tid=? ORDER BY partition", (group, tid)
                )
            )

    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        """Delete records below ``before[partition]``; the next offsets stay where they are."""
        with self._lock, Txn(self._conn()) as c:
            tid = self._tid(topic)
            c.executemany(
                "DELETE FROM records WHERE tid=? AND partition=? AND offset<?",
                [(tid, part, offset) for part, offset in before.items()],
            )

    def close(self) -> None:
        """Close the admin connection."""
        with self._lock:
            if self._admin is not None and self._pid == os.getpid():
                self._admin.close()
            self._admin = None
