"""Reading the embedded broker's log outside a consumer group: tails and offset lookups by time."""

from __future__ import annotations

import sqlite3

from taskq.brokers.base import Reader, Record
from taskq.brokers.local.store import decode_headers, poll
from taskq.errors import BrokerError

MIN_SLEEP = 0.005
MAX_SLEEP = 0.05


def offsets_for_time(conn: sqlite3.Connection, tid: int, ts: float) -> dict[int, int]:
    """Partition -> first offset stored at or after ``ts`` (epoch s), else the partition's next offset."""
    out: dict[int, int] = {}
    for part, high in conn.execute("SELECT partition, next_offset FROM partitions WHERE tid=?", (tid,)).fetchall():
        row = conn.execute("SELECT MIN(offset) FROM records WHERE tid=? AND partition=? AND ts>=?",
                           (tid, part, int(ts * 1000))).fetchone()
        out[part] = row[0] if row and row[0] is not None else high
    return out


class LocalReader(Reader):
    """Reads ``topic`` from given offsets by polling the records table (WAL readers never block writers)."""

    def __init__(self, conn: sqlite3.Connection, topic: str, tid: int, start: dict[int, int]) -> None:
        self._conn = conn
        self._topic = topic
        self._tid = tid
        self._positions = dict(start)

    def read(self, max_records: int, timeout: float) -> list[Record]:
        return poll(lambda: self._fetch(max_records), timeout, MIN_SLEEP, MAX_SLEEP)

    def _fetch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        try:
            for part, pos in sorted(self._positions.items()):
                want = max_records - len(out)
                if want <= 0:
                    break
                rows = self._conn.execute(
                    "SELECT offset, key, value, headers, ts FROM records "
                    "WHERE tid=? AND partition=? AND offset>=? ORDER BY offset LIMIT ?",
                    (self._tid, part, pos, want)).fetchall()
                if rows:
                    out.extend(Record(self._topic, part, o, k, v, decode_headers(h), ts)
                               for o, k, v, h, ts in rows)
                    self._positions[part] = rows[-1][0] + 1
        except sqlite3.Error as exc:
            raise BrokerError(f"local broker read of {self._topic} failed: {exc}") from exc
        return out

    def close(self) -> None:
        self._conn.close()
