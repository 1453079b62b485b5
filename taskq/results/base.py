"""The result backend contract: one record per task id, written once per outcome, read by callers."""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskq.errors import ConfigError, SerializationError
from taskq.serialization import JSON, json_dumps

log = logging.getLogger("taskq.results")

PENDING = "PENDING"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"  # revoked before it ran (or terminated while running): never runs
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
FINAL_UNLESS_REVOKED = READY_STATES - {REVOKED}  # what store_unless_final leaves as it is
RESTART_MARK = b"\x00restart"  # stored between two attempts' chunks (never valid JSON)


class StreamRestart:
    """Yielded by ``AsyncResult.stream()`` when a new attempt of the task starts streaming while the
    caller watches: discard what the earlier attempt showed. A caller that starts reading later gets
    only the last attempt's chunks, without a restart."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "StreamRestart()"


def last_attempt(raw: list[bytes]) -> list[bytes]:
    """The chunks after the last restart mark."""
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] == RESTART_MARK:
            return raw[i + 1:]
    return raw


def decode_chunk(raw: bytes) -> Any:
    return StreamRestart() if raw == RESTART_MARK else JSON.loads(raw)


@dataclass(slots=True)
class ResultRecord:
    """State and outcome of one task."""

    id: str
    status: str = PENDING
    result: Any = None
    error: str | None = None  # "module.ExceptionType: message"
    traceback: str | None = None
    task: str | None = None
    worker: str | None = None
    attempts: int = 0
    date_done: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None  # the workflow's first task (None: this task is its own root)
    parent_id: str | None = None  # the task (or group/chord) that sent this one
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # cache of encode()

    @property
    def ready(self) -> bool:
        return self.status in READY_STATES

    def encode(self) -> bytes:
        """JSON bytes, computed once (the worker encodes where the task ran, the backend reuses it)."""
        if self.encoded is None:
            self.encoded = json_dumps({
                "id": self.id, "status": self.status, "result": self.result, "error": self.error,
                "traceback": self.traceback, "task": self.task, "worker": self.worker,
                "attempts": self.attempts, "date_done": self.date_done, "meta": self.meta,
                "root_id": self.root_id, "parent_id": self.parent_id,
            }, (self.result, self.meta))
        return self.encoded

    @classmethod
    def decode(cls, data: bytes, task_id: str | None = None) -> ResultRecord:
        """A stored record; a field this version does not know (a newer taskq wrote it) is left out, and a
        value that is no record (another client wrote the key) is a SerializationError naming the task."""
        try:
            fields = JSON.loads(data)
            return cls(**{k: v for k, v in fields.items() if k in RECORD_FIELDS}, encoded=data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise SerializationError(f"result of task {task_id or '?'} is not a taskq result record ({exc}): "
                                     f"{bytes(data[:80])!r}") from exc


RECORD_FIELDS = frozenset(ResultRecord.__dataclass_fields__) - {"encoded"}


class ResultBackend(ABC):
    """Where workers store outcomes and callers wait for them."""

    url: str
    expires: float

    @abstractmethod
    def store_many(self, records: list[ResultRecord]) -> None:
        """Write records (one round trip where the store allows) with the expiry; raise on failure."""

    @abstractmethod
    def store_unless_final(self, records: list[ResultRecord]) -> list[str]:
        """Write each record unless its task's stored result is final (other than REVOKED), in one step
        that no other write comes between; the ids written."""

    @abstractmethod
    def get_many(self, ids: Iterable[str]) -> list[ResultRecord | None]:
        """Records for ``ids`` in order; None where nothing is stored."""

    def any_stored(self, ids: list[str]) -> bool:
        """Whether any of ``ids`` has a record; a cheap pre-check before :meth:`get_many`."""
        return any(r is not None for r in self.get_many(ids))

    def get(self, task_id: str) -> ResultRecord | None:
        return self.get_many([task_id])[0]

    def get_readable(self, ids: list[str]) -> list[ResultRecord | None]:
        """:meth:`get_many` for a worker deciding whether a redelivered task already finished: a stored value
        that is no record (another client wrote the key) counts as none, so the task runs and replaces it."""
        try:
            return self.get_many(ids)
        except SerializationError:
            found: list[ResultRecord | None] = []
            for task_id in ids:
                try:
                    found.append(self.get(task_id))
                except SerializationError as exc:
                    log.warning("%s; the task runs and its result replaces it", exc)
                    found.append(None)
            return found

    def open_connections(self, count: int) -> None:
        """Open up to ``count`` connections ahead of use, best effort (a store without any does nothing)."""

    @abstractmethod
    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        """Block until the record is ready (or ``timeout`` passes: then the latest record or None)."""

    @abstractmethod
    def append_chunk(self, task_id: str, chunk: Any) -> None:
        """Publish one partial result (an LLM token, a progress step)."""

    @abstractmethod
    def restart_chunks(self, task_id: str) -> None:
        """Mark the start of a new attempt's partial results (earlier chunks belong to a failed attempt)."""

    def append_chunks(self, items: Sequence[tuple[str, Any]]) -> None:
        """Publish partial results of several tasks in order, ``(task_id, chunk)`` each, a chunk of None
        being a restart mark (:meth:`restart_chunks`); backends that can do it in one round trip do."""
        for task_id, chunk in items:
            if chunk is None:
                self.restart_chunks(task_id)
            else:
                self.append_chunk(task_id, chunk)

    @abstractmethod
    def stream(self, task_id: str, timeout: float | None) -> Iterator[Any]:
        """Partial results as they arrive, ending when the task is ready; only the latest attempt's when
        reading starts, then a :class:`StreamRestart` for each attempt that starts while reading."""

    def forget(self, task_ids: Iterable[str]) -> None:
        """Drop stored results (optional)."""

    # -- claims: unique tasks, the beat's leader lease and its fired ticks -------------------------

    @abstractmethod
    def claim(self, name: str, value: str, ttl: float) -> str | None:
        """Take ``name`` for ``ttl`` seconds unless someone holds it: None if taken now, else the holder's value."""

    @abstractmethod
    def extend(self, name: str, value: str, ttl: float) -> bool:
        """Renew a claim held by ``value`` for another ``ttl`` seconds; False if it is not (any longer) held."""

    @abstractmethod
    def release(self, name: str, value: str) -> None:
        """Drop a claim if ``value`` still holds it."""

    # -- canvas bookkeeping (taskq.flow), expiring with the results ---------------------------------

    def save_chords(self, chords: list[dict[str, Any]]) -> None:
        """Store chord state (``{"id", "size", "body", "then", ...}``) before its header tasks are sent."""
        raise self._no_canvas()

    def get_chord(self, chord_id: str) -> dict[str, Any] | None:
        raise self._no_canvas()

    def chord_report(self, chord_id: str, index: int, value: bytes) -> int:
        """Atomically store header result ``index`` (idempotent) and return how many are stored."""
        raise self._no_canvas()

    def chord_parts(self, chord_id: str) -> dict[int, bytes]:
        raise self._no_canvas()

    def chord_claim(self, chord_id: str, claim: str) -> str:
        """Set the chord's state to ``claim`` unless it has one; return the state now held."""
        raise self._no_canvas()

    def chord_set_state(self, chord_id: str, state: str) -> None:
        raise self._no_canvas()

    def add_children(self, children: dict[str, list[str]]) -> None:
        """Record parent -> child task ids (the workflow tree: ``AsyncResult.children``)."""
        raise self._no_canvas()

    def children(self, parent_id: str) -> list[str]:
        """Child ids of ``parent_id`` in the order they were sent (no duplicates)."""
        raise self._no_canvas()

    def _no_canvas(self) -> Exception:
        from taskq.errors import ConfigError

        return ConfigError(f"{type(self).__name__} keeps no canvas state: use the Redis or local result backend")

    def close(self) -> None:
        """Release connections."""

    @staticmethod
    def _deadline(timeout: float | None) -> float:
        """The monotonic time a wait of ``timeout`` seconds ends (None: never; NaN would never end either)."""
        if timeout is None:
            return float("inf")
        if math.isnan(timeout):
            raise ConfigError("timeout is NaN: give a number of seconds, or None to wait without a limit")
        return time.monotonic() + timeout
