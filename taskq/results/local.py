"""Result store in the embedded SQLite file that the local broker uses, for single-machine use.

Connections are opened by the broker's :func:`~taskq.brokers.local.store.connect` (WAL, busy
timeout), one per thread.

SQLite has no notifications, so ``wait`` re-reads with a short backoff (1 ms growing to 20 ms).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from taskq.brokers.local.store import SCHEME, connect
from taskq.errors import BackendError
from taskq.results.base import RESTART_MARK, ResultBackend, ResultRecord, decode_chunk, last_attempt
from taskq.serialization import JSON

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (id, seq);
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
"""


class LocalBackend(ResultBackend):
    """Results in the SQLite file at ``path`` (shared with other processes)."""

    def __init__(self, path: str, expires: float = 86400) -> None:
        self.path = path
        self.url = SCHEME + path
        self.expires = expires
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path, BackendError)
        return db

    def store_many(self, records: list[ResultRecord]) -> None:
        expires = time.time() + self.expires
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                           [(r.id, r.encode(), expires) for r in records])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get_many(self, ids: Iterable[str]) -> list[ResultRecord | None]:
        wanted = list(ids)
        found: dict[str, ResultRecord] = {}
        now = time.time()
        db = self._db()
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            marks = ",".join("?" * len(part))
            for task_id, value in db.execute(
                f"SELECT id, value FROM results WHERE id IN ({marks}) AND expires > ?", (*part, now)
            ):
                found[task_id] = ResultRecord.decode(value)
        return [found.get(i) for i in wanted]

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        deadline = self._deadline(timeout)
        pause = 0.001
        while True:
            record = self.get(task_id)
            left = deadline - time.monotonic()
            if (record is not None and record.ready) or left <= 0:
                return record
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)

    def append_chunk(self, task_id: str, chunk: Any) -> None:
        self._db().execute("INSERT INTO chunks (id, value) VALUES (?, ?)", (task_id, JSON.dumps(chunk)))

    def restart_chunks(self, task_id: str) -> None:
        self._db().execute("INSERT INTO chunks (id, value) VALUES (?, ?)", (task_id, RESTART_MARK))

    def stream(self, task_id: str, timeout: float | None) -> Iterator[Any]:
        deadline = self._deadline(timeout)
        last = 0
        pause = 0.001
        while True:
            record = self.get(task_id)
            rows = self._db().execute(
                "SELECT seq, value FROM chunks WHERE id = ? AND seq > ? ORDER BY seq", (task_id, last)
            ).fetchall()
            first_read = last == 0
            if rows:
                last = rows[-1][0]
            values = [bytes(v) for _, v in rows]
            for value in (last_attempt(values) if first_read else values):
                yield decode_chunk(value)
            if (record is not None and record.ready) or time.monotonic() >= deadline:
                return
            if not rows:
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            else:
                pause = 0.001

    def claim(self, name: str, value: str, ttl: float) -> str | None:
        db = self._db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM claims WHERE name = ? AND expires <= ?", (name, now))
            taken = db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?, ?)", (name, value, now + ttl)).rowcount
            holder = None if taken else db.execute("SELECT value FROM claims WHERE name = ?", (name,)).fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return holder

    def extend(self, name: str, value: str, ttl: float) -> bool:
        now = time.time()
        return bool(self._db().execute("UPDATE claims SET expires = ? WHERE name = ? AND value = ? AND expires > ?",
                                       (now + ttl, name, value, now)).rowcount)

    def release(self, name: str, value: str) -> None:
        self._db().execute("DELETE FROM claims WHERE name = ? AND value = ?", (name, value))

    def forget(self, task_ids: Iterable[str]) -> None:
        ids = [(i,) for i in task_ids]
        db = self._db()
        db.executemany("DELETE FROM results WHERE id = ?", ids)
        db.executemany("DELETE FROM chunks WHERE id = ?", ids)
