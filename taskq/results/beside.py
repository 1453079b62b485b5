"""Stores kept beside an app's results (rate limits, LLM usage, LLM blocks): in its Redis under a key
prefix of their own, or in the embedded SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from taskq.config import redact_url
from taskq.errors import ConfigError

if TYPE_CHECKING:
    from taskq.app import Taskq

T = TypeVar("T")


def beside_results(app: Taskq, what: str, namespace: str, on_redis: Callable[[Any, str], T],
                   on_local: Callable[[str], T]) -> T:
    """``on_redis(client, "<namespace>:<app name>:")`` for a Redis backend, ``on_local(path)`` for the
    embedded file; any other backend is a ConfigError naming ``what``."""
    from taskq.results.local import LocalBackend

    backend = app.backend
    if isinstance(backend, LocalBackend):
        return on_local(backend.path)
    from taskq.results.redis import RedisBackend  # after: users of the embedded store need not load the Redis client

    if isinstance(backend, RedisBackend):
        return on_redis(backend.client, f"{namespace}:{app.name}:")
    raise ConfigError(f"no {what} for result backend {redact_url(backend.url)!r}: use Redis or the embedded store")
