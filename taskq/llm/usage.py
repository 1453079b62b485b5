"""Tokens and cost of LLM tasks, rolled up per user, task name and root task, by the hour.

Every successful LLM call is added, as soon as the provider has answered and before its task returns
(:class:`taskq.llm.writes.LoopWrites`: one store round trip for the calls finishing together), to three
roll-ups (``user``, ``task``, ``root``) in hourly buckets, plus a per-user daily total for budgets,
in the app's result store: Redis hashes (``HINCRBY`` in one pipeline) or the embedded SQLite file. The task's
result also carries the same figures in ``result.meta["llm"]``.

``taskq usage --by user|task|root [--since 2h] [--json]`` reads them; ``--since`` counts whole hours.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskq.brokers.local.store import ThreadConnections
from taskq.errors import BackendError, ConfigError
from taskq.results.beside import beside_results

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.results.resp import Redis

BY = ("user", "task", "root")
METRICS = ("requests", "input_tokens", "output_tokens", "cost_micro", "latency_ms")
SEP = "\x1f"
HOUR = 3600
KEEP_HOURS = 24 * 40  # roll-ups older than this expire


@dataclass(frozen=True, slots=True)
class Usage:
    """One LLM call, as accounted."""

    user: str
    task: str
    root: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: float  # US dollars
    latency: float  # seconds
    ts: float

    def names(self) -> dict[str, str]:
        return {"user": self.user, "task": self.task, "root": self.root}

    def counts(self) -> dict[str, int]:
        return {"requests": 1, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_micro": round(self.cost * 1_000_000), "latency_ms": round(self.latency * 1000)}


@dataclass(slots=True)
class Row:
    """A roll-up line: totals for one user, task or root."""

    name: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0  # mean seconds per request

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "requests": self.requests, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "tokens": self.input_tokens + self.output_tokens,
                "cost": round(self.cost, 6), "latency": round(self.latency, 4)}


def rows_from(totals: dict[str, dict[str, int]]) -> list[Row]:
    rows = []
    for name, m in totals.items():
        n = m.get("requests", 0)
        rows.append(Row(name, n, m.get("input_tokens", 0), m.get("output_tokens", 0),
                        m.get("cost_micro", 0) / 1_000_000, m.get("latency_ms", 0) / 1000 / n if n else 0.0))
    return sorted(rows, key=lambda r: (-r.cost, -r.requests, r.name))


def day_of(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


class UsageStore(ABC):
    """Where roll-ups live."""

    @abstractmethod
    def add(self, usages: Sequence[Usage]) -> None:
        """Add calls to every roll-up (one round trip where the store allows)."""

    @abstractmethod
    def totals(self, by: str, since: float | None = None) -> list[Row]:
        """Roll-up ``by`` user, task or root over the hours from ``since`` (default: all kept)."""

    @abstractmethod
    def spent_today(self, user: str, now: float | None = None) -> tuple[int, float]:
        """(tokens, US dollars) used by ``user`` this UTC day."""

    @staticmethod
    def _check_by(by: str) -> None:
        if by not in BY:
            raise ConfigError(f"usage by {by!r}: use one of {', '.join(BY)}")


class RedisUsageStore(UsageStore):
    """Hashes ``<prefix><by>:<hour>`` with fields ``<name>\\x1f<metric>``; ``<prefix>day:<YYYYMMDD>`` per user."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def add(self, usages: Sequence[Usage]) -> None:
        if not usages:
            return
        sums: dict[tuple[str, str], int] = {}  # (hash, field) -> increment: one HINCRBY per field per batch
        for u in usages:
            hour = int(u.ts // HOUR)
            counts = u.counts()
            for by, name in u.names().items():
                key = f"{self.prefix}{by}:{hour}"
                for metric, value in counts.items():
                    field = (key, f"{name}{SEP}{metric}")
                    sums[field] = sums.get(field, 0) + value
            day = f"{self.prefix}day:{day_of(u.ts)}"
            for field, value in (((day, f"{u.user}{SEP}tokens"), u.input_tokens + u.output_tokens),
                                 ((day, f"{u.user}{SEP}cost_micro"), counts["cost_micro"])):
                sums[field] = sums.get(field, 0) + value
        commands: list[tuple[Any, ...]] = [("HINCRBY", key, field, value) for (key, field), value in sums.items()]
        commands += [("EXPIRE", key, KEEP_HOURS * HOUR) for key in dict.fromkeys(key for key, _ in sums)]
        self.client.pipeline(commands)

    def totals(self, by: str, since: float | None = None) -> list[Row]:
        self._check_by(by)
        now_hour = int(time.time() // HOUR)
        first = now_hour - KEEP_HOURS if since is None else int(since // HOUR)
        hours = range(first, now_hour + 1)
        buckets = self.client.pipeline([("HGETALL", f"{self.prefix}{by}:{hour}") for hour in hours])
        totals: dict[str, dict[str, int]] = {}
        for bucket in buckets:
            for field, value in zip(bucket[::2], bucket[1::2]):
                name, _, metric = field.decode().rpartition(SEP)
                slot = totals.setdefault(name, {})
                slot[metric] = slot.get(metric, 0) + int(value)
        return rows_from(totals)

    def spent_today(self, user: str, now: float | None = None) -> tuple[int, float]:
        tokens, cost = self.client.call("HMGET", f"{self.prefix}day:{day_of(now or time.time())}",
                                        f"{user}{SEP}tokens", f"{user}{SEP}cost_micro")
        return int(tokens or 0), int(cost or 0) / 1_000_000


class LocalUsageStore(UsageStore):
    """Tables in the embedded SQLite file (shared by the processes of one machine)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS llm_usage (by TEXT NOT NULL, hour INTEGER NOT NULL, name TEXT NOT NULL,
        requests INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
        cost_micro INTEGER NOT NULL, latency_ms INTEGER NOT NULL, PRIMARY KEY (by, hour, name));
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conns = ThreadConnections(path, BackendError)
        self._db().executescript(self.SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def add(self, usages: Sequence[Usage]) -> None:
        rows: list[tuple[Any, ...]] = []
        for u in usages:
            c = u.counts()
            values = (c["requests"], c["input_tokens"], c["output_tokens"], c["cost_micro"], c["latency_ms"])
            hour = int(u.ts // HOUR)
            rows.extend((by, hour, name, *values) for by, name in u.names().items())
            rows.append(("day", int(day_of(u.ts)), u.user, *values))
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO llm_usage VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (by, hour, name) DO UPDATE SET "
                "requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens, "
                "output_tokens = output_tokens + excluded.output_tokens, "
                "cost_micro = cost_micro + excluded.cost_micro, latency_ms = latency_ms + excluded.latency_ms",
                rows)
            db.execute("DELETE FROM llm_usage WHERE by != 'day' AND hour < ?",
                       (int(time.time() // HOUR) - KEEP_HOURS,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def totals(self, by: str, since: float | None = None) -> list[Row]:
        self._check_by(by)
        first = 0 if since is None else int(since // HOUR)
        totals: dict[str, dict[str, int]] = {}
        for name, *values in self._db().execute(
                "SELECT name, SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cost_micro), "
                "SUM(latency_ms) FROM llm_usage WHERE by = ? AND hour >= ? GROUP BY name", (by, first)):
            totals[name] = dict(zip(METRICS, values))
        return rows_from(totals)

    def spent_today(self, user: str, now: float | None = None) -> tuple[int, float]:
        row = self._db().execute("SELECT input_tokens + output_tokens, cost_micro FROM llm_usage "
                                 "WHERE by = 'day' AND hour = ? AND name = ?",
                                 (int(day_of(now or time.time())), user)).fetchone()
        return (int(row[0]), row[1] / 1_000_000) if row else (0, 0.0)


def usage_store(app: Taskq) -> UsageStore:
    """The usage store beside the app's results (Redis, or the embedded SQLite file)."""
    return beside_results(app, "usage store", "taskq-usage", RedisUsageStore, LocalUsageStore)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO date/time (UTC) -> epoch seconds; None for None/``all``."""
    if text is None or text == "all":
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r}: use 30m, 2h, 7d or an ISO date like 2026-11-25T08:00") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def table_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]
