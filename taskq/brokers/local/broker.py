"""The local broker: producers, consumers and admin calls over one SQLite file."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence

from taskq.brokers.base import AssignmentCallback, Broker, Reader
from taskq.brokers.local.consumer import LocalConsumer
from taskq.brokers.local.producer import LocalProducer
from taskq.brokers.local.reader import LocalReader, offsets_for_time
from taskq.brokers.local.store import (
    DEFAULT_SESSION_TIMEOUT,
    MAX_BATCH,
    SCHEME,
    Txn,
    connect,
    number_option,
    path_from_url,
    topic_map,
)
from taskq.errors import BrokerError, ConfigError
from taskq.topics import check_topic


class LocalBroker(Broker):
    """Kafka-like broker in one SQLite file, shared by every process that opens the same path."""

    def __init__(self, path: str) -> None:
        self.path = path_from_url(path)
        parent = os.path.dirname(self.path)
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

    def ensure_topics(self, topics: dict[str, int], replication: int = 0) -> set[str]:
        """Create missing topics (existing ones keep their partition count); wakes up subscribed groups."""
        for name, n in topics.items():
            check_topic(name)
            if int(n) < 1:
                raise ConfigError(f"topic {name!r} needs at least 1 partition, got {n}")
        with self._lock:
            try:
                with Txn(self._conn()) as c:
                    existing = topic_map(c)
                    created = [name for name in topics if name not in existing]
                    for name in created:
                        n = int(topics[name])
                        tid = c.execute("INSERT INTO topics(name, partitions) VALUES (?,?)", (name, n)).lastrowid
                        c.executemany("INSERT INTO partitions VALUES (?,?,0)", [(tid, p) for p in range(n)])
                    if created:
                        c.execute("UPDATE groups SET generation=generation+1")
            except sqlite3.Error as exc:
                raise BrokerError(f"cannot create topics in {self.path!r}: {exc}") from exc
        return set(created)

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

    def offsets_for_time(self, topic: str, ts: float) -> dict[int, int]:
        with self._lock:
            return offsets_for_time(self._conn(), self._tid(topic), ts)

    def reader(self, topic: str, start: dict[int, int]) -> Reader:
        with self._lock:
            tid = self._tid(topic)
        return LocalReader(connect(self.path), topic, tid, start)

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
