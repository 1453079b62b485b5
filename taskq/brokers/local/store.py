"""The embedded broker's storage: one SQLite file, its schema, connections and small codecs.

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

One place opens the file (:func:`connect`) and parses ``local://`` URLs (:func:`path_from_url`);
the local result store (:mod:`taskq.results.local`) uses both.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from taskq.brokers.base import Headers
from taskq.errors import BrokerError, ConfigError, TaskqError

SCHEME = "local://"
BUSY_TIMEOUT_MS = 30_000
DEFAULT_SESSION_TIMEOUT = 10.0
MAX_BATCH = 5_000
MAX_MESSAGE_BYTES = 1_000_000  # Kafka's producer default (message.max.bytes)
MAX_BATCH_BYTES = 8 << 20
MIN_SLEEP = 0.001
MAX_SLEEP = 0.02
T = TypeVar("T")

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
    """``local:///abs/file.db`` -> ``/abs/file.db``; ``local://rel.db`` -> ``<cwd>/rel.db``; plain paths too."""
    if url.startswith(SCHEME):
        path = url[len(SCHEME) :].split("?", 1)[0]
    elif url.startswith("local:"):
        path = url[len("local:") :]
    else:
        path = url
    if not path:
        raise ConfigError(f"local broker URL {url!r} has no file path; use local:///abs/path/to/file.db")
    return os.path.abspath(path)


def connect(path: str, error: type[TaskqError] = BrokerError) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL, ``busy_timeout`` and the schema in place.

    A failure raises ``error`` (the result store passes BackendError).
    """
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
        raise error(f"cannot open local database {path!r}: {exc}; check the path and permissions") from exc
    return conn


class ThreadConnections:
    """One :func:`connect` connection per thread to ``path``, opened on first use in that thread."""

    def __init__(self, path: str, error: type[TaskqError] = BrokerError) -> None:
        self.path = path
        self._error = error
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path, self._error)
        return db


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


def poll(fetch: Callable[[], list[T]], timeout: float, min_sleep: float = MIN_SLEEP,
         max_sleep: float = MAX_SLEEP) -> list[T]:
    """``fetch()`` until it returns something or ``timeout`` s pass (then ``[]``), sleeping in between:
    ``min_sleep`` first, doubling up to ``max_sleep`` (the log has no notification; short sleeps keep
    latency low)."""
    deadline = time.monotonic() + max(0.0, timeout)
    delay = min_sleep
    while True:
        found = fetch()
        if found:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_sleep)
