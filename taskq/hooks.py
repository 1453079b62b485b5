"""Worker hooks: typed, no-op by default, called only where a hook overrides them.

Subclass :class:`Hook`, override the methods you need and register an instance with
``app.add_hook(hook)``. When a worker starts it builds a :class:`HookSet`: per event kind, the bound
methods of the hooks that override it. The hot path then calls one prebuilt function per batch (or
per task for ``started``); a kind no hook overrides costs a call to a no-op, never a string lookup.

Hooks run in the worker's threads (named per method below), so they must be quick and thread-safe:
hand heavy work to a thread of your own (as :class:`taskq.events.EventsHook` does). A hook that
raises is logged once per (hook, kind) and otherwise ignored: it never fails, retries or loses a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskq.brokers.base import Record, TopicPartition

if TYPE_CHECKING:
    from taskq.execution import Outcome
    from taskq.results.base import ResultRecord

log = logging.getLogger("taskq.hooks")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A snapshot of a worker, for the worker_* hooks (and the heartbeat event)."""

    name: str  # "<hostname>:<pid>" unless named with -n
    hostname: str
    pid: int
    pool: str
    concurrency: int
    group: str
    active: int = 0  # records taken and not finished
    processed: int = 0  # records with an outcome (success, retry, dead, rejected) or skipped
    partitions: tuple[TopicPartition, ...] = ()
    freq: float = 2.0  # seconds between heartbeats


class Hook:
    """Base class of worker hooks: every method is a no-op; override the ones you need.

    ``records``/``outcomes`` arrive in batches (as the worker handles them) to keep the hot path cheap.
    """

    def worker_online(self, worker: WorkerInfo) -> None:
        """The worker has started (before it joins the group). Thread: the one calling ``Worker.run``."""

    def worker_heartbeat(self, worker: WorkerInfo) -> None:
        """Every ``worker.freq`` seconds while running. Thread: the heartbeat thread."""

    def worker_offline(self, worker: WorkerInfo) -> None:
        """The worker has stopped: work finished, offsets committed. Thread: the one calling ``run``."""

    def received(self, records: Sequence[Record], now: float) -> None:
        """Records taken from the task topics (a poll batch), at ``now`` (epoch s). Thread: consumer."""

    def started(self, record: Record) -> None:
        """A record's task is about to run. Thread: the pool thread running it."""

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes made durable (result stored, retry or dead letter acknowledged); ``outcome.kind``
        is SUCCESS, RETRY, DEAD (failed and dead-lettered) or REJECTED. Thread: the finisher."""

    def skipped(self, records: Sequence[Record], results: Sequence[ResultRecord | None]) -> None:
        """Records not run again: a redelivery whose task already has a final result (``results``, in
        the same order), or (result None) a second copy of a follow-up task running here. Thread: consumer."""

    def abandoned(self, records: Sequence[Record]) -> None:
        """Records not started before a stop or revoke; left uncommitted for redelivery."""

    def forwarded(self, records: Sequence[Record]) -> None:
        """Delayed records moved from a delay tier back to their task topic. Thread: the forwarder."""

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Offsets handed to the consumer for commit (the next offset to read). Thread: consumer."""

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """Partitions given to this worker. Thread: consumer."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (after in-flight work was finished and committed). Thread: consumer."""


#: every hook method, in the order above
KINDS: tuple[str, ...] = ("worker_online", "worker_heartbeat", "worker_offline", "received", "started",
                          "finished", "skipped", "abandoned", "forwarded", "committed", "assigned", "revoked")


def _noop(*_args: Any) -> None:
    return None


class HookSet:
    """The hooks of one worker, resolved once: one attribute per kind, a function to call.

    ``overridden(kind)`` says whether any hook implements ``kind`` (so a caller can skip building
    arguments, e.g. the pool skips the ``started`` call entirely).
    """

    worker_online: Callable[[WorkerInfo], None]
    worker_heartbeat: Callable[[WorkerInfo], None]
    worker_offline: Callable[[WorkerInfo], None]
    received: Callable[[Sequence[Record], float], None]
    started: Callable[[Record], None]
    finished: Callable[[Sequence[Outcome]], None]
    skipped: Callable[[Sequence[Record], Sequence[ResultRecord | None]], None]
    abandoned: Callable[[Sequence[Record]], None]
    forwarded: Callable[[Sequence[Record]], None]
    committed: Callable[[dict[TopicPartition, int]], None]
    assigned: Callable[[list[TopicPartition]], None]
    revoked: Callable[[list[TopicPartition]], None]

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)
        self._reported: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._overridden: dict[str, bool] = {}
        for kind in KINDS:
            base = getattr(Hook, kind)
            methods = [getattr(h, kind) for h in self.hooks if getattr(type(h), kind, base) is not base]
            self._overridden[kind] = bool(methods)
            setattr(self, kind, self._fan_out(kind, methods))

    def overridden(self, kind: str) -> bool:
        return self._overridden[kind]

    def _fan_out(self, kind: str, methods: list[Callable[..., None]]) -> Callable[..., None]:
        if not methods:
            return _noop
        failed = self._failed
        if len(methods) == 1:
            method = methods[0]

            def call_one(*args: Any) -> None:
                try:
                    method(*args)
                except Exception as exc:  # noqa: BLE001 - a hook never fails a task
                    failed(method, kind, exc)
            return call_one

        def call_all(*args: Any) -> None:
            for m in methods:
                try:
                    m(*args)
                except Exception as exc:  # noqa: BLE001
                    failed(m, kind, exc)
        return call_all

    def _failed(self, method: Callable[..., None], kind: str, exc: Exception) -> None:
        owner = getattr(method, "__self__", method)
        ident = (id(owner), kind)
        with self._lock:
            if ident in self._reported:
                return
            self._reported.add(ident)
        log.error("hook %s.%s raised %s: %s (ignored; further errors of this hook and kind are not logged)",
                  type(owner).__name__, kind, type(exc).__name__, exc, exc_info=exc)
