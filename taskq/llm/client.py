"""The anthropic SDK client: configuration from the environment, one client per worker process.

Who retries: **taskq**. The client is built with ``max_retries=0`` so that a 429, a 529 or a dropped
connection comes back to the task at once, and the task's retry policy (delay-tier topics, ``retry-after``
as the countdown, a bounded number of attempts, dead letters) decides; the SDK's own retries would sleep
inside the worker holding a slot, with their own count and backoff, invisible to results and events.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskq.config import redact_url
from taskq.errors import ConfigError
from taskq.llm.transport import shard_count, sharded_transport

API_KEY = "ANTHROPIC_API_KEY"
BASE_URL = "TASKQ_LLM_BASE_URL"
SDK_BASE_URL = "ANTHROPIC_BASE_URL"
CONNECT_TIMEOUT = "TASKQ_LLM_CONNECT_TIMEOUT"
READ_TIMEOUT = "TASKQ_LLM_READ_TIMEOUT"
MAX_CONNECTIONS = "TASKQ_LLM_MAX_CONNECTIONS"
PLACEHOLDER_KEY = "taskq-no-key"  # sent to a base URL that needs none (the local stand-in)


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """Where and how to call the Messages API."""

    api_key: str
    base_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # longest silence between two bytes of an answer
    max_connections: int = 1000

    def __repr__(self) -> str:  # never show the key, nor a password in the URL (a gateway's)
        base_url = None if self.base_url is None else redact_url(self.base_url)
        return f"LLMConfig(base_url={base_url!r}, connect_timeout={self.connect_timeout}, " \
               f"read_timeout={self.read_timeout}, max_connections={self.max_connections})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMConfig:
        """Read ``ANTHROPIC_API_KEY``, ``TASKQ_LLM_BASE_URL`` (or ``ANTHROPIC_BASE_URL``) and the timeouts.

        Raises :class:`ConfigError` naming the variables when neither a key nor a base URL is set.
        """
        env = os.environ if env is None else env
        key = env.get(API_KEY, "").strip()
        base_url = (env.get(BASE_URL) or env.get(SDK_BASE_URL) or "").strip() or None
        if not key and not base_url:
            raise ConfigError(f"no LLM provider configured: set {API_KEY} (the Anthropic API) or {BASE_URL} "
                              f"(a Messages API server, e.g. `taskq llm-server` at http://127.0.0.1:8765)")
        try:
            config = cls(key or PLACEHOLDER_KEY, base_url, float(env.get(CONNECT_TIMEOUT, 5.0)),
                         float(env.get(READ_TIMEOUT, 60.0)), int(env.get(MAX_CONNECTIONS, 1000)))
        except ValueError as exc:
            raise ConfigError(f"bad LLM timeout or connection setting: {exc} "
                              f"(check {CONNECT_TIMEOUT}, {READ_TIMEOUT}, {MAX_CONNECTIONS})") from exc
        for var, value in ((CONNECT_TIMEOUT, config.connect_timeout), (READ_TIMEOUT, config.read_timeout),
                           (MAX_CONNECTIONS, config.max_connections)):
            if not (math.isfinite(value) and value > 0):  # 0: every call times out; inf or NaN: a stall never does
                raise ConfigError(f"{var}={env.get(var)!r}: must be a finite number over 0")
        return config


class LLMClients:
    """Hands out one ``anthropic.AsyncAnthropic`` per process and event loop (the asyncio pool has one
    loop per worker process, so: one client per worker process, not one per call).

    The configuration is read on first use (or by :meth:`check` when the worker starts).
    """

    def __init__(self, config: LLMConfig | None = None) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()

    @property
    def config(self) -> LLMConfig:
        if self._config is None:
            self._config = LLMConfig.from_env()
        return self._config

    def check(self) -> LLMConfig:
        """Fail now, with the variable to set, when no provider is configured or the SDK is missing."""
        config = self.config
        try:
            import anthropic  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the anthropic SDK is not installed: pip install 'taskq[llm]'") from exc
        return config

    def get(self) -> Any:
        """The client for the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's connections are not ours
                self._clients = weakref.WeakKeyDictionary()
                self._pid = os.getpid()
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._make()
            return client

    def _make(self) -> Any:
        import anthropic

        httpx = http_module()
        config = self.check()
        timeout = anthropic.Timeout(config.read_timeout, connect=config.connect_timeout)
        if shard_count(config.max_connections) > 1 and not urllib.request.getproxies():
            # the same connection limit in several pools: each request scans a few dozen connections
            http_client = anthropic.DefaultAsyncHttpxClient(
                timeout=timeout, transport=sharded_transport(httpx, config.max_connections))
        else:  # the library's own pool (it also routes through HTTP(S)_PROXY when set)
            limits = httpx.Limits(max_connections=config.max_connections,
                                  max_keepalive_connections=min(config.max_connections, 1000))
            http_client = anthropic.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
        return anthropic.AsyncAnthropic(api_key=config.api_key, base_url=config.base_url, max_retries=0,
                                        timeout=timeout, http_client=http_client)


def http_module() -> Any:
    """The SDK's HTTP library: ``httpx2`` (anthropic >= 2) or ``httpx``."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx
