"""Admission for LLM calls: per-user daily budgets, blocked users, provider RPM/TPM limits.

* Budgets (``TASKQ_LLM_DAILY_TOKENS``, ``TASKQ_LLM_DAILY_COST`` in US dollars): once a user's tokens or
  cost of the current UTC day reach the budget, ``.delay()`` raises :class:`BudgetExceeded` and a queued
  call fails (dead letter) with the same error when the worker takes it.
* Blocks: :meth:`Guard.block` (the rate-limit-violations consumer) stops a user for a while; ``.delay()``
  then raises :class:`RateLimited`. Each block leaves a notice (:meth:`Guard.notices`).
* Provider limits (``TASKQ_LLM_RPM``, ``TASKQ_LLM_TPM``) per API key, across every worker: a call waits for
  its turn (requests) and for its estimated tokens (prompt + ``max_tokens``), corrected after the answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskq.brokers.local.store import ThreadConnections
from taskq.errors import BackendError, BudgetExceeded, ConfigError, RateLimited
from taskq.execution import sleep_outside_time_limit
from taskq.llm.usage import UsageStore, usage_store
from taskq.ratelimit import Rate, RateLimiter, rate_limiter
from taskq.results.beside import beside_results

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.results.resp import Redis

NOTICES_KEPT = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets per user and day, and the provider's rate limits per API key (None: no limit)."""

    daily_tokens: int | None = None
    daily_cost: float | None = None
    rpm: float | None = None
    tpm: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        names = {"daily_tokens": ("TASKQ_LLM_DAILY_TOKENS", int), "daily_cost": ("TASKQ_LLM_DAILY_COST", float),
                 "rpm": ("TASKQ_LLM_RPM", float), "tpm": ("TASKQ_LLM_TPM", float)}
        values: dict[str, Any] = {}
        for field, (var, kind) in names.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ConfigError(f"{var}={raw!r} is not a number") from None
                value, budget = values[field], field.startswith("daily")  # a budget of 0 refuses every call
                if not math.isfinite(value) or value < 0 or (value == 0 and not budget):
                    raise ConfigError(f"{var}={raw!r}: must be a finite number, {'0 or more' if budget else 'over 0'}"
                                      f" (unset it for no limit)")
        return cls(**values)


class Guard:
    """Budget and block checks, and the provider limits, in the app's result store."""

    def __init__(self, app: Taskq, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self._usage: UsageStore | None = None
        self._limiter: RateLimiter | None = None
        self._blocks: BlockStore | None = None

    @property
    def usage(self) -> UsageStore:
        if self._usage is None:
            self._usage = usage_store(self.app)
        return self._usage

    @property
    def limiter(self) -> RateLimiter:
        if self._limiter is None:
            self._limiter = rate_limiter(self.app)
        return self._limiter

    @property
    def blocks(self) -> BlockStore:
        if self._blocks is None:
            self._blocks = block_store(self.app)
        return self._blocks

    def check_budget(self, user: str | None) -> None:
        """Raise :class:`BudgetExceeded` when ``user`` has spent today's budget."""
        limits = self.limits
        if user is None or (limits.daily_tokens is None and limits.daily_cost is None):
            return
        tokens, cost = self.usage.spent_today(user)
        if limits.daily_tokens is not None and tokens >= limits.daily_tokens:
            raise BudgetExceeded(f"user {user!r} used {tokens} tokens today, the daily budget is "
                                 f"{limits.daily_tokens} (TASKQ_LLM_DAILY_TOKENS); it resets at 00:00 UTC")
        if limits.daily_cost is not None and cost >= limits.daily_cost:
            raise BudgetExceeded(f"user {user!r} spent ${cost:.4f} today, the daily budget is "
                                 f"${limits.daily_cost:g} (TASKQ_LLM_DAILY_COST); it resets at 00:00 UTC")

    def check_blocked(self, user: str | None) -> None:
        """Raise :class:`RateLimited` while ``user`` is blocked."""
        if user is None:
            return
        left = self.blocks.blocked_for(user)
        if left > 0:
            raise RateLimited(f"user {user!r} is blocked for {left:.0f} more s after exceeding the request "
                              f"rate; try again later", retry_after=left)

    def send_check(self, _task: Any, key: str | None) -> None:
        """For ``task.add_send_check``: the key is the user."""
        self.check_blocked(key)
        self.check_budget(key)

    async def take_turn(self, api_key: str, tokens: int) -> float:
        """Wait for a request slot and ``tokens`` of the provider key's limits; returns seconds waited."""
        if not (self.limits.rpm or self.limits.tpm):
            return 0.0
        name = "provider:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]
        waits = []
        if self.limits.rpm:
            waits.append(self.limiter.reserve(name + ":rpm", Rate(self.limits.rpm, 60.0)))
        if self.limits.tpm:
            waits.append(self.limiter.reserve(name + ":tpm", Rate(self.limits.tpm, 60.0, burst=1.0), tokens))
        delay = max(waits, default=0.0)
        if delay > 0:
            await sleep_outside_time_limit(delay)  # a call waiting its turn is delayed, not timed out
        return delay

    def settle(self, api_key: str, estimated: int, used: int) -> None:
        """Correct the token reservation of a finished call."""
        if self.limits.tpm and used != estimated:
            name = "provider:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]
            self.limiter.adjust(name + ":tpm", Rate(self.limits.tpm, 60.0), used - estimated)


class BlockStore:
    """Blocked users with an expiry, and notices of blocks."""

    def block(self, user: str, seconds: float, notice: dict[str, Any]) -> None:
        raise NotImplementedError

    def blocked_for(self, user: str) -> float:
        raise NotImplementedError

    def notices(self, limit: int = 100) -> list[dict[str, Any]]:
        raise NotImplementedError


class RedisBlockStore(BlockStore):
    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def block(self, user: str, seconds: float, notice: dict[str, Any]) -> None:
        self.client.pipeline([("SET", f"{self.prefix}blocked:{user}", "1", "PX", max(1, int(seconds * 1000))),
                              ("LPUSH", f"{self.prefix}notices", json.dumps(notice)),
                              ("LTRIM", f"{self.prefix}notices", 0, NOTICES_KEPT - 1)])

    def blocked_for(self, user: str) -> float:
        left = self.client.call("PTTL", f"{self.prefix}blocked:{user}")
        return left / 1000 if left and left > 0 else 0.0

    def notices(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(n) for n in self.client.call("LRANGE", f"{self.prefix}notices", 0, limit - 1)]


class LocalBlockStore(BlockStore):
    def __init__(self, path: str) -> None:
        self.path = path
        self._conns = ThreadConnections(path, BackendError)
        self._db().executescript("CREATE TABLE IF NOT EXISTS llm_blocks (user TEXT PRIMARY KEY, until REAL);"
                                 "CREATE TABLE IF NOT EXISTS llm_notices (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 "notice TEXT NOT NULL);")

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def block(self, user: str, seconds: float, notice: dict[str, Any]) -> None:
        db = self._db()
        db.execute("INSERT OR REPLACE INTO llm_blocks VALUES (?, ?)", (user, time.time() + seconds))
        db.execute("INSERT INTO llm_notices (notice) VALUES (?)", (json.dumps(notice),))

    def blocked_for(self, user: str) -> float:
        row = self._db().execute("SELECT until FROM llm_blocks WHERE user = ?", (user,)).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def notices(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT notice FROM llm_notices ORDER BY seq DESC LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in rows]


def block_store(app: Taskq) -> BlockStore:
    return beside_results(app, "block store", "taskq-llm", RedisBlockStore, LocalBlockStore)
