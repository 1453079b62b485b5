"""Result store in the embedded SQLite file that the local broker uses, for single-machine use.

Connections are opened by the broker's :func:`~taskq.brokers.local.store.connect` (WAL, busy
timeout), one per thread.

SQLite has no notifications, so ``wait`` re-reads with a short backoff (1 ms growing to 20 ms).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from taskq.brokers.local.store import SCHEME, ThreadConnections
from taskq.errors import BackendError
from taskq.results.base import (
    FINAL_UNLESS_REVOKED,
    RESTART_MARK,
    ResultBackend,
    ResultRecord,
    decode_chunk,
    last_attempt,
)
from taskq.serialization import JSON

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (id, seq);
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);

CREATE TABLE IF NOT EXISTS chords (id TEXT PRIMARY KEY, value BLOB NOT NULL, state TEXT, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chord_parts (id TEXT NOT NULL, idx INTEGER NOT NULL, value BLOB NOT NULL,
                                        expires REAL NOT NULL, PRIMARY KEY (id, idx));
CREATE TABLE IF NOT EXISTS children (seq INTEGER PRIMARY KEY AUTOINCREMENT, parent TEXT NOT NULL,
                                     child TEXT NOT NULL, expires REAL NOT NULL, UNIQUE (parent, child));
"""


class LocalBackend(ResultBackend):
    """Results in the SQLite file at ``path`` (shared with other processes)."""

    def __init__(self, path: str, expires: float = 86400) -> None:
        self.path = path
        self.url = SCHEME + path
        self.expires = expires
        self._conns = ThreadConnections(path, BackendError)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            value = fn(db)
            db.execute("COMMIT")
            return value
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def store_many(self, records: list[ResultRecord]) -> None:
        expires = time.time() + self.expires
        self._write(lambda db: db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                                              [(r.id, r.encode(), expires) for r in records]))

    def store_unless_final(self, records: list[ResultRecord]) -> list[str]:
        def write(db: sqlite3.Connection) -> list[str]:
            now = time.time()
            written = []
            for record in records:
                row = db.execute("SELECT value FROM results WHERE id = ? AND expires > ?", (record.id, now)).fetchone()
                if row is None or ResultRecord.decode(row[0]).status not in FINAL_UNLESS_REVOKED:
                    db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                               (record.id, record.encode(), now + self.expires))
                    written.append(record.id)
            return written
        return self._write(write)

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
                found[task_id] = ResultRecord.decode(value, task_id)
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

    # -- canvas bookkeeping: rows expire with the results (expired ones are purged as chords are saved)

    def save_chords(self, chords: list[dict[str, Any]]) -> None:
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            for table in ("chords", "chord_parts", "children"):
                db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))
            db.executemany("INSERT OR IGNORE INTO chords VALUES (?, ?, NULL, ?)",
                           [(c["id"], JSON.dumps(c), now + self.expires) for c in chords])
        self._write(write)

    def get_chord(self, chord_id: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT value FROM chords WHERE id = ? AND expires > ?",
                                 (chord_id, time.time())).fetchone()
        return None if row is None else JSON.loads(row[0])

    def chord_report(self, chord_id: str, index: int, value: bytes) -> int:
        def write(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute("INSERT OR REPLACE INTO chord_parts VALUES (?, ?, ?, ?)", (chord_id, index, value,
                                                                              now + self.expires))
            # a chord outlasting the expiry stays known
            db.execute("UPDATE chords SET expires = ? WHERE id = ? AND expires > ?", (now + self.expires, chord_id, now))
            return int(db.execute("SELECT count(*) FROM chord_parts WHERE id = ?", (chord_id,)).fetchone()[0])
        return self._write(write)

    def chord_parts(self, chord_id: str) -> dict[int, bytes]:
        return dict(self._db().execute("SELECT idx, value FROM chord_parts WHERE id = ?", (chord_id,)))

    def chord_claim(self, chord_id: str, claim: str) -> str:
        def write(db: sqlite3.Connection) -> str:
            db.execute("UPDATE chords SET state = ? WHERE id = ? AND state IS NULL", (claim, chord_id))
            row = db.execute("SELECT state FROM chords WHERE id = ?", (chord_id,)).fetchone()
            return "" if row is None else str(row[0])
        return self._write(write)

    def chord_set_state(self, chord_id: str, state: str) -> None:
        self._write(lambda db: db.execute("UPDATE chords SET state = ? WHERE id = ?", (state, chord_id)))

    def add_children(self, children: dict[str, list[str]]) -> None:
        expires = time.time() + self.expires
        rows = [(parent, child, expires) for parent, ids in children.items() for child in ids]
        self._write(lambda db: db.executemany(
            "INSERT OR IGNORE INTO children (parent, child, expires) VALUES (?, ?, ?)", rows))

    def children(self, parent_id: str) -> list[str]:
        return [r[0] for r in self._db().execute(
            "SELECT child FROM children WHERE parent = ? AND expires > ? ORDER BY seq", (parent_id, time.time()))]
