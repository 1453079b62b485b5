"""Consumer-group membership in the SQLite file: join, heartbeat, rebalance, claim.

Rebalancing: inside ``consume()`` a member compares the group generation with the one it last
saw. On a change it reads the member list (one snapshot), computes the round-robin assignment
every member computes identically, calls ``on_revoke`` for partitions it must give up and only
then deletes its ``owners`` rows. Partitions it gains are claimed once their ``owners`` row is
free (released, or held by a member that left / whose heartbeat expired), then ``on_assign``
is called and reading starts at the committed offset (else 0). Heartbeats are written from
``consume()`` and ``commit()``, and by a background thread between polls (so a member waiting in
``on_revoke`` for running work keeps its membership); every heartbeat from ``consume()`` also evicts
members whose session expired.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

from taskq.brokers.base import AssignmentCallback, TopicPartition
from taskq.brokers.local.store import Txn, connect, topic_map

log = logging.getLogger("taskq.brokers.local")
MAX_POLL_INTERVAL = 300.0  # s without a poll after which heartbeats stop (Kafka's max.poll.interval.ms)


class GroupMembership:
    """The membership half of :class:`~taskq.brokers.local.consumer.LocalConsumer`.

    It keeps which partitions this member owns (``_owned``) and where each is read from
    (``_positions``); the consumer calls :meth:`_maintain` before every fetch.
    """

    _conn: sqlite3.Connection
    _group: str
    _topics: list[str]
    _on_assign: AssignmentCallback | None
    _on_revoke: AssignmentCallback | None
    _session_timeout: float
    _hb_interval: float
    member_id: str
    _generation: int
    _owned: set[TopicPartition]
    _pending: set[TopicPartition]
    _positions: dict[TopicPartition, int]
    _tids: dict[str, int]
    _names: dict[int, str]
    _next_hb: float
    _joined: bool
    _closed: bool
    _path: str
    _last_poll: float  # time.monotonic() of the last consume(): the heartbeat thread's liveness check


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
        threading.Thread(target=self._heartbeat_loop, name=f"taskq-local-heartbeat-{self.member_id[-6:]}",
                         daemon=True).start()

    def _heartbeat_loop(self) -> None:
        """Keep the membership alive between polls, as Kafka's background heartbeat thread does.

        The consumer thread may spend long inside ``on_revoke`` (waiting for running tasks) or between
        ``consume`` calls; this thread refreshes the heartbeat meanwhile, so the group does not evict a
        member that is still working and hand its partitions to a newcomer (who would run the same
        records again). Like Kafka's ``max.poll.interval.ms``, it stops once the consumer has not polled
        for MAX_POLL_INTERVAL, so a member stuck for good is still evicted. It only refreshes: joining,
        evicting others and rebalancing stay on the consumer thread.
        """
        conn = connect(self._path)
        try:
            while not self._closed:
                time.sleep(self._hb_interval)
                if self._closed or time.monotonic() - self._last_poll > MAX_POLL_INTERVAL:
                    continue
                try:
                    with Txn(conn) as c:
                        c.execute("UPDATE members SET heartbeat=? WHERE grp=? AND member=?",
                                  (time.time(), self._group, self.member_id))
                except sqlite3.Error as exc:
                    log.warning("member %s of group %s: heartbeat failed: %s", self.member_id, self._group, exc)
        finally:
            conn.close()

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
        self._last_poll = time.monotonic()
        if not self._joined:
            self._join()
        elif time.monotonic() >= self._next_hb:
            self._heartbeat()
        row = self._conn.execute("SELECT generation FROM groups WHERE name=?", (self._group,)).fetchone()
        if row is None or row[0] != self._generation:
            self._rebalance()
        elif self._pending:
            self._claim()
