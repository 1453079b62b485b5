"""Which provider failures are worth another attempt, and after how long.

* retried: 408, 409, 429, 5xx and 529 answers; an ``error`` event in the middle of a stream
  (``overloaded_error``, ``api_error``, ``rate_limit_error``); timeouts; refused or dropped connections; a
  stream that ends before its ``stop_reason``, or with an event that is not JSON.
  A ``retry-after`` (or ``retry-after-ms``) header is the countdown of the next attempt (the caller caps it:
  a provider or proxy asking for a day, or for ``inf``, must not park the task that long).
* not retried (dead letter): other 4xx, with the API's error type and message in the error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from taskq.errors import Reject, TaskqError
from taskq.llm.client import http_module

RETRY_STATUSES = frozenset({408, 409, 429})
RETRY_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class ProviderUnavailable(TaskqError):
    """The model provider failed in a way worth retrying (rate limit, overload, 5xx, timeout, dropped
    connection); taskq retries with backoff or after the provider's ``retry-after``."""


class ProviderRejected(Reject):
    """The provider refused the request itself (a 4xx other than 408/409/429): fix the request; it is
    dead-lettered without retrying. The message starts with the API's error type."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified provider failure: the error to raise and, for retries, the provider's delay."""

    error: Exception
    retry: bool
    retry_after: float | None = None


def classify(exc: BaseException) -> Failure | None:
    """A :class:`Failure` for an SDK or HTTP error, or None when ``exc`` is not a provider failure."""
    import anthropic

    httpx = http_module()
    if isinstance(exc, ProviderUnavailable):
        return Failure(exc, True)
    if isinstance(exc, json.JSONDecodeError):  # raised by the SDK reading an event (a broken proxy, a bad gateway)
        return Failure(ProviderUnavailable(f"the model provider sent an event that is not JSON: {exc}"), True)
    if isinstance(exc, anthropic.APIStatusError):
        status, kind = exc.status_code, exc.type or ""
        message = exc.api_message or str(exc)
        described = f"{kind or 'HTTP ' + str(status)}: {message}"
        if status in RETRY_STATUSES or status >= 500 or (status < 300 and kind in RETRY_TYPES):
            where = " (in the stream)" if status < 300 else f" (HTTP {status})"
            return Failure(ProviderUnavailable(described + where), True, retry_after(exc.response))
        return Failure(ProviderRejected(f"{described} (HTTP {status})"), False)
    if isinstance(exc, (anthropic.APIConnectionError, httpx.TransportError)):
        what = "timed out" if isinstance(exc, (anthropic.APITimeoutError, httpx.TimeoutException)) else "failed"
        return Failure(ProviderUnavailable(f"connection to the model provider {what}: "
                                           f"{type(exc).__name__}: {exc}"), True)
    return None


def retry_after(response: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds), or None."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if math.isfinite(seconds):
                return max(0.0, seconds)
    return None
