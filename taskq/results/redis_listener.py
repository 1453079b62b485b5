"""One Redis pub/sub connection per process that wakes every waiting ``get()``.

A waiter registers its channel, the listener subscribes it on the shared connection and signals once
Redis has confirmed the subscription (only then may the waiter read the key: a result stored before is
found by the read, one stored after is announced on the channel). A message on the channel wakes its
waiters; they read the key again. The last waiter of a channel unsubscribes it.

Replaces a new connection, ``SUBSCRIBE`` and ``close`` per ``get()``: a round trip saves a TCP connect
and the teardown. A lost connection wakes every waiter (they read their key and wait again) and is
re-established by the next read, which subscribes the channels again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from taskq.errors import BackendError, BackendRefused
from taskq.results.resp import Redis

log = logging.getLogger("taskq.results")
IDLE_CHANNEL = "taskq-listener-idle:"  # a private channel keeps the connection subscribed between waits
RECONNECT_PAUSE = 0.2  # s between attempts after the connection failed


class Waiter:
    """One ``wait()`` call's view of its channel: confirmed subscription, "something was published", and
    what the last message said (a final result's record, or a word such as ``chunk``)."""

    __slots__ = ("subscribed", "notified", "payload")

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.notified = threading.Event()
        self.payload: bytes | None = None


class ResultListener:
    """The shared subscriber of a :class:`~taskq.results.redis.RedisBackend` (created on first wait)."""

    def __init__(self, client: Redis) -> None:
        self._pid = os.getpid()
        self._pubsub = client.pubsub()
        self._lock = threading.Lock()  # guards _waiters and every command sent on the connection
        self._waiters: dict[bytes, set[Waiter]] = {}
        self._closed = False
        self._pubsub.subscribe(IDLE_CHANNEL + uuid.uuid4().hex)
        self._thread = threading.Thread(target=self._run, name="taskq-result-listener", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Usable in this process (a forked child must build its own)."""
        return not self._closed and self._pid == os.getpid() and self._thread.is_alive()

    def register(self, channel: str) -> Waiter:
        """Subscribe ``channel`` for a new waiter; ``waiter.subscribed`` is set once Redis confirmed it."""
        waiter = Waiter()
        name = channel.encode()
        with self._lock:
            waiters = self._waiters.setdefault(name, set())
            waiters.add(waiter)
            try:
                self._pubsub.subscribe(name)
            except BaseException:  # Redis is down: this wait fails now, and nobody waits on its behalf
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[name]
                raise
        return waiter

    def unregister(self, channel: str, waiter: Waiter) -> None:
        """Drop a waiter; its channel is unsubscribed when it was the last one."""
        name = channel.encode()
        with self._lock:
            waiters = self._waiters.get(name)
            if waiters is None:
                return
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[name]
                try:
                    self._pubsub.unsubscribe(name)
                except BackendError as exc:  # the reconnect subscribes only what is still waited on
                    log.debug("result listener: unsubscribe failed: %s", exc)

    def close(self) -> None:
        """Stop the thread and close the connection."""
        self._closed = True
        self._pubsub.close()

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for w in waiters:
                    w.subscribed.set()
                    w.notified.set()

    def _run(self) -> None:
        while not self._closed:
            try:
                message = self._pubsub.get_message(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - a closed or broken socket raises several kinds
                if self._closed:
                    return
                with self._lock:
                    idle = not self._waiters
                if idle:  # nobody waits: stop here; the next wait builds a new listener
                    log.info("result listener: Redis connection failed (%s); stopping while idle", exc)
                    self.close()
                    return
                log.warning("result listener: Redis connection failed (%s); reconnecting", exc)
                self._wake_all()  # waiters read their key again, then wait on the new connection
                time.sleep(RECONNECT_PAUSE)
                continue
            if message is None:
                continue
            kind, channel, data = message
            if kind not in ("message", "subscribe"):
                continue
            with self._lock:
                waiters = list(self._waiters.get(channel, ()))
            for w in waiters:
                if kind == "subscribe":
                    w.subscribed.set()
                else:
                    w.payload = data
                    w.notified.set()


def raise_unless_unreachable_until(exc: BackendError, deadline: float) -> None:
    """Re-raise ``exc`` unless it says Redis was unreachable (restarting, stalled) and ``deadline`` is still
    ahead: then a waiting caller reads again (a refusal would only be refused again)."""
    if isinstance(exc, BackendRefused) or time.monotonic() >= deadline:
        raise exc


def wait_on(listener: ResultListener, channel: str, read: Any, deadline: float, safety: float = 5.0,
            decode: Any = None) -> Any:
    """Subscribe ``channel``, then ``read()`` until it returns a ready record or ``deadline`` passes.

    ``read()`` returns a record or None; the last one read is returned. A message on the channel means
    "read again", unless ``decode(payload)`` turns the message itself into a ready record (a final
    result published with its record: no second read); a read happens at least every ``safety`` s too.
    A read that finds Redis unreachable (restarting) is tried again until ``deadline``, then its error raised.
    """
    waiter = listener.register(channel)
    record = None
    try:
        waiter.subscribed.wait(max(0.0, min(deadline - time.monotonic(), safety)))
        while True:
            waiter.notified.clear()
            payload, waiter.payload = waiter.payload, None
            published = decode(payload) if decode is not None and payload else None
            pause = safety
            if published is not None and published.ready:
                return published
            try:
                record = read()
            except BackendError as exc:  # the listener reconnects meanwhile and subscribes the channel again
                raise_unless_unreachable_until(exc, deadline)
                log.debug("waiting for %s: %s; reading again in %.1f s", channel, exc, RECONNECT_PAUSE)
                pause = RECONNECT_PAUSE
            if record is not None and record.ready:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            waiter.notified.wait(min(left, pause))
    finally:
        listener.unregister(channel, waiter)
