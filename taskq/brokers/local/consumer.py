"""The local consumer: a group member reading its partitions from the file, committing offsets there.

Membership (join, heartbeat, rebalance) is in :mod:`taskq.brokers.local.group`; this module reads
records from the owned, unpaused partitions and stores commits.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence

from taskq.brokers.base import AssignmentCallback, Consumer, Record, TopicPartition
from taskq.brokers.local.group import GroupMembership
from taskq.brokers.local.store import (
    DEFAULT_SESSION_TIMEOUT,
    Txn,
    connect,
    decode_headers,
    poll,
)
from taskq.errors import BrokerError, ConfigError

log = logging.getLogger("taskq.brokers.local")


class LocalConsumer(GroupMembership, Consumer):
    """A consumer group member; :mod:`taskq.brokers.local.group` describes the rebalance protocol."""

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
        self._last_poll = time.monotonic()
        self._rotate = 0
        self._closed = False
        self._joined = False

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
        return poll(lambda: self._take(max_records), timeout)

    def _take(self, max_records: int) -> list[Record]:
        """One try of :meth:`consume`: keep the membership alive, then read what is there."""
        with self._lock:
            if self._closed:
                raise BrokerError("consumer is closed; create a new one with broker.consumer()")
            try:
                self._maintain()
                return self._fetch(max_records)
            except sqlite3.Error as exc:
                raise BrokerError(f"local broker read from {self._path!r} failed: {exc}") from exc

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
                except sqlite3.Error as exc:  # as a killed member does, it leaves when its session expires
                    log.warning("member %s of group %s could not leave (%s); it leaves when its session of "
                                "%.1f s expires", self.member_id, self._group, exc, self._session_timeout)
                finally:
                    self._owned.clear()
                    self._conn.close()
