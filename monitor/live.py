"""Server-sent events: the event-consumer thread publishes, each browser or API client has a queue.

A slow client never blocks the consumer: its bounded queue drops the oldest item and the client is
told to resync (``{"type": "resync"}``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson


class Broadcaster:
    """Fan-out of events to asyncio subscribers, fed from any thread."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_put, queue, event)
            except RuntimeError:  # the loop closed
                self.unsubscribe(queue)

    def __len__(self) -> int:
        return len(self._subscribers)


def _put(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    if queue.full():
        queue.get_nowait()
        event = {"type": "resync"}
    queue.put_nowait(event)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent-events frame."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data, default=str) + b"\n\n"
