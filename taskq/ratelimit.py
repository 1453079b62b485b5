"""Rate limits shared by every worker: a token bucket kept in the result store (Redis or SQLite).

The bucket is the generic cell rate algorithm (GCRA): one number per limit, the theoretical arrival time
(TAT) of the next unit. :meth:`RateLimiter.reserve` takes ``units`` and returns how long the caller must
wait before using them: callers reserve in turn and sleep, so work is delayed, never dropped, and the
rate holds across processes. Redis evaluates it in one Lua script on the server's clock.

``@app.task(rate_limit="10/m")`` limits a task across all workers; ``rate_limit_per_key=True`` gives each
message key (e.g. each user) its own bucket. A task waiting for its turn holds its key (the key's order is
kept) but not the partition: other keys' tasks run meanwhile (a pool slot waits with it; on the asyncio
pool a waiting task costs nothing but a coroutine).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskq.errors import BackendError, ConfigError
from taskq.results.beside import beside_results

if TYPE_CHECKING:
    import sqlite3

    from taskq.app import Taskq
    from taskq.results.resp import Redis

RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
           "d": 86400, "day": 86400}

GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local new = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 60000)
return string.format('%.6f', wait)
"""


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` units per ``period`` seconds, with bursts of ``burst`` units."""

    count: float
    period: float
    burst: float = 1.0

    @classmethod
    def parse(cls, text: str, burst: float = 1.0) -> Rate:
        """``"10/m"``, ``"100/s"``, ``"5/10s"``, ``"1000/h"``."""
        match = RATE.match(text)
        if not match or float(match.group(1)) <= 0 or float(match.group(2) or 1) <= 0:
            raise ConfigError(f"rate limit {text!r}: write it as <count>/<unit>, e.g. 10/m, 100/s, 5/10s, 1000/h")
        period = float(match.group(2) or 1) * PERIODS[match.group(3)]
        return cls(float(match.group(1)), period, burst)

    @property
    def interval(self) -> float:
        """Seconds per unit."""
        return self.period / self.count

    def __str__(self) -> str:
        return f"{self.count:g}/{self.period:g}s"


class RateLimiter(ABC):
    """Reserve units of named limits; the store is shared by every worker of the app."""

    @abstractmethod
    def reserve(self, name: str, rate: Rate, units: float = 1.0) -> float:
        """Take ``units`` of limit ``name``; returns the seconds to wait before using them (0: now)."""

    @abstractmethod
    def adjust(self, name: str, rate: Rate, units: float) -> None:
        """Correct an earlier reservation by ``units`` (negative: give back), e.g. tokens used vs estimated."""

    def wait(self, name: str, rate: Rate, units: float = 1.0) -> float:
        """Reserve and sleep until the units may be used; returns the seconds waited."""
        delay = self.reserve(name, rate, units)
        if delay > 0:
            time.sleep(delay)
        return delay

    async def wait_async(self, name: str, rate: Rate, units: float = 1.0) -> float:
        """:meth:`wait` for coroutines: the event loop runs other work meanwhile."""
        import asyncio

        delay = self.reserve(name, rate, units)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay


class RedisRateLimiter(RateLimiter):
    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.script(GCRA)

    def reserve(self, name: str, rate: Rate, units: float = 1.0) -> float:
        tolerance = (rate.burst - 1) * rate.interval
        return float(self._script([self.prefix + name], [units * rate.interval, tolerance]))

    def adjust(self, name: str, rate: Rate, units: float) -> None:
        if units:
            self.client.call("INCRBYFLOAT", self.prefix + name, units * rate.interval)


class LocalRateLimiter(RateLimiter):
    """The same algorithm in the embedded SQLite file, on this machine's clock."""

    def __init__(self, path: str) -> None:
        from taskq.brokers.local.store import ThreadConnections  # the embedded store only where it is used

        self.path = path
        self._conns = ThreadConnections(path, BackendError)
        self._db().execute("CREATE TABLE IF NOT EXISTS rate_limits (name TEXT PRIMARY KEY, tat REAL NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def _update(self, name: str, fn: Any) -> float:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT tat FROM rate_limits WHERE name = ?", (name,)).fetchone()
            tat, result = fn(row[0] if row else 0.0, time.time())
            db.execute("INSERT OR REPLACE INTO rate_limits VALUES (?, ?)", (name, tat))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return float(result)

    def reserve(self, name: str, rate: Rate, units: float = 1.0) -> float:
        def step(tat: float, now: float) -> tuple[float, float]:
            tat = max(tat, now)
            return tat + units * rate.interval, max(0.0, tat - (rate.burst - 1) * rate.interval - now)
        return self._update(name, step)

    def adjust(self, name: str, rate: Rate, units: float) -> None:
        if units:
            self._update(name, lambda tat, now: (tat + units * rate.interval, 0.0))


def rate_limiter(app: Taskq) -> RateLimiter:
    """The limiter beside the app's results (Redis, or the embedded SQLite file)."""
    return beside_results(app, "rate limiter", "taskq-rate", RedisRateLimiter, LocalRateLimiter)
