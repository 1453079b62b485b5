"""The monitor's view of tasks and workers, rebuilt from task events (schema v1).

One ``State`` is fed by one event-consumer thread (``apply``) and read by web threads (``tasks``,
``task``, ``workers``...): a lock guards both. Memory is bounded: at most ``max_tasks`` tasks are
kept, the least recently updated one is dropped first, every task keeps at most ``TIMELINE_CAP``
timeline entries, and arguments or a result over ``PAYLOAD_CAP`` bytes of JSON only as their beginning.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from taskq.events import STATES as EVENT_STATES
from taskq.inspect import lost

TIMELINE_CAP = 50
PAYLOAD_CAP = 8192  # bytes of JSON kept of a task's args, kwargs or result (events_include_args)
PAYLOAD_FIELDS = frozenset({"args", "kwargs", "result"})
SERIES_SECONDS = 3600  # throughput history kept for the overview chart (one bucket a second)

#: event type -> the state a task is in after it (taskq.events owns the mapping; task-dead is a FAILURE)
STATE_OF = dict(EVENT_STATES)
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REJECTED", "REVOKED", "SKIPPED"})
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REJECTED", "REVOKED", "SKIPPED")
TASK_FIELDS = ("task", "root_id", "parent_id", "key", "topic", "partition", "offset", "attempt", "sent",
               "received", "started", "finished", "runtime", "exc_type", "exc_message", "args", "kwargs",
               "result", "worker")
_NUMBER = (int, float)
#: the type an event's field must have to be kept: any producer can write the events topic, and one value of
#: another type (a string runtime, a numeric task name) would break every page that shows the task
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "root_id": (str,), "parent_id": (str,), "topic": (str,), "worker": (str,), "exc_type": (str,),
    "exc_message": (str,), "hostname": (str,), "pool": (str,), "partition": (int,), "offset": (int,),
    "attempt": (int,), "pid": (int,), "concurrency": (int,), "active": (int,), "processed": (int,),
    "sent": _NUMBER, "received": _NUMBER, "started": _NUMBER, "finished": _NUMBER, "runtime": _NUMBER,
    "freq": _NUMBER}


@dataclass(slots=True)
class TaskView:
    """What the events told about one task."""

    id: str
    task: str | None = None
    state: str = "PENDING"
    state_ts: float = 0.0
    root_id: str | None = None
    parent_id: str | None = None
    key: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    attempt: int = 0
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    runtime: float | None = None
    worker: str | None = None
    exc_type: str | None = None
    exc_message: str | None = None
    args: Any = None
    kwargs: Any = None
    result: Any = None
    dead: bool = False
    retries: int = 0
    updated: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_seen(self) -> float:
        return self.sent or self.received or self.started or self.updated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class WorkerView:
    """A worker as its online/heartbeat/offline events describe it."""

    name: str
    hostname: str | None = None
    pid: int | None = None
    pool: str | None = None
    concurrency: int | None = None
    active: int = 0
    processed: int = 0
    partitions: list[list[Any]] = field(default_factory=list)
    freq: float = 2.0
    last_heartbeat: float = 0.0
    online_since: float | None = None
    offline: bool = False

    def alive(self, now: float) -> bool:
        """Online and heard from within three heartbeat intervals (not :func:`taskq.inspect.lost`)."""
        return not self.offline and not lost(now - self.last_heartbeat, self.freq)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {**asdict(self), "alive": self.alive(now)}


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters of the task list (all optional)."""

    name: str | None = None
    state: str | None = None
    key: str | None = None
    since: float | None = None
    until: float | None = None
    topic: str | None = None
    partition: int | None = None
    min_offset: int | None = None
    root_id: str | None = None
    worker: str | None = None

    def matches(self, t: TaskView) -> bool:
        seen = t.first_seen
        return ((self.name is None or t.task == self.name or (t.task or "").endswith("." + self.name))
                and (self.state is None or t.state == self.state.upper())
                and (self.key is None or t.key == self.key)
                and (self.since is None or seen >= self.since)
                and (self.until is None or seen <= self.until)
                and (self.topic is None or t.topic == self.topic)
                and (self.partition is None or t.partition == self.partition)
                and (self.min_offset is None or (t.offset is not None and t.offset >= self.min_offset))
                and (self.root_id is None or t.root_id == self.root_id)
                and (self.worker is None or t.worker == self.worker))


class State:
    """Tasks (bounded LRU) and workers, plus per-second throughput by state."""

    def __init__(self, max_tasks: int = 10_000) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, TaskView] = OrderedDict()
        self._workers: dict[str, WorkerView] = {}
        self._series: deque[tuple[int, Counter[str]]] = deque(maxlen=SERIES_SECONDS)
        self._lock = threading.Lock()
        self.events_applied = 0
        self.evicted = 0
        self.bad_events = 0
        self.counts: Counter[str] = Counter()  # event type -> how many applied

    # -- writing ----------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the view; malformed events are counted and ignored."""
        kind = event.get("type")
        if not isinstance(kind, str) or not isinstance(event.get("ts", 0), (int, float)):
            self.bad_events += 1
            return
        with self._lock:
            self.events_applied += 1
            self.counts[kind] += 1
            if kind.startswith("worker-"):
                self._apply_worker(kind, event)
            elif kind.startswith("task-") and isinstance(event.get("id"), str):
                self._apply_task(kind, event)
            else:
                self.bad_events += 1

    def _apply_task(self, kind: str, e: dict[str, Any]) -> None:
        ts = float(e.get("ts") or time.time())
        task = self._tasks.get(e["id"])
        if task is None:
            task = TaskView(e["id"])
            self._tasks[e["id"]] = task
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
                self.evicted += 1
        else:
            self._tasks.move_to_end(e["id"])
        task.updated = ts
        for name in TASK_FIELDS:
            value = _field(e, name)
            if value is not None:
                if name == "key":
                    value = str(value)
                elif name in PAYLOAD_FIELDS:
                    value = _capped(value)
                setattr(task, name, value)
        new_state = STATE_OF.get(kind)
        if kind == "task-skipped":  # redelivered after it finished: the state its finished run stored
            stored = _field(e, "state")
            new_state = stored if stored in FINAL_STATES else (
                None if task.state in FINAL_STATES else "SKIPPED")
        if kind == "task-dead":
            task.dead = True
        if kind == "task-retried":
            task.retries += 1
        # events of one task can arrive out of order (several workers): a final state sticks unless a
        # later attempt starts over (a replayed dead letter), and an older event never overrides
        if new_state is not None and (ts >= task.state_ts or new_state in FINAL_STATES) and not (
                task.state in FINAL_STATES and new_state not in FINAL_STATES and ts < task.state_ts):
            task.state, task.state_ts = new_state, ts
        if len(task.timeline) < TIMELINE_CAP:
            task.timeline.append({"type": kind, "ts": ts, "worker": _field(e, "worker"),
                                  "attempt": _field(e, "attempt"), "exc": _exc(e)})
        if new_state is not None:
            self._count(ts, new_state)

    def _apply_worker(self, kind: str, e: dict[str, Any]) -> None:
        name = e.get("worker") or e.get("hostname")
        if not isinstance(name, str):
            self.bad_events += 1
            return
        w = self._workers.setdefault(name, WorkerView(name))
        ts = float(e.get("ts") or time.time())
        for attr in ("hostname", "pid", "pool", "concurrency", "active", "processed", "freq"):
            value = _field(e, attr)
            if value is not None:
                setattr(w, attr, value)
        partitions = e.get("partitions")
        if isinstance(partitions, list) and all(isinstance(tp, list) and len(tp) == 2 and isinstance(tp[0], str)
                                                and isinstance(tp[1], int) for tp in partitions):
            w.partitions = partitions
        if ts >= w.last_heartbeat:
            w.last_heartbeat = ts
            w.offline = kind == "worker-offline"
        if kind == "worker-online":
            w.online_since = ts

    def _count(self, ts: float, state: str) -> None:
        second = int(ts)
        if self._series and self._series[-1][0] == second:
            self._series[-1][1][state] += 1
        elif not self._series or second > self._series[-1][0]:
            self._series.append((second, Counter({state: 1})))
        else:  # an older second (events from a slower partition): find it if still kept
            for s, counter in reversed(self._series):
                if s == second:
                    counter[state] += 1
                    break
                if s < second:
                    break

    # -- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tasks)

    def task(self, task_id: str) -> TaskView | None:
        with self._lock:
            return self._tasks.get(task_id)

    def tasks(self, flt: TaskFilter | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[TaskView]]:
        """(how many match, the newest ``limit`` of them after skipping ``offset``)."""
        flt = flt or TaskFilter()
        with self._lock:
            matched = [t for t in reversed(self._tasks.values()) if flt.matches(t)]
        return len(matched), matched[offset:offset + limit]

    def family(self, root_id: str) -> list[TaskView]:
        """Every kept task of the tree rooted at ``root_id``."""
        with self._lock:
            return [t for t in self._tasks.values() if t.root_id == root_id or t.id == root_id]

    def workers(self) -> list[WorkerView]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: w.name)

    def states(self) -> Counter[str]:
        with self._lock:
            return Counter(t.state for t in self._tasks.values())

    def task_names(self) -> list[str]:
        with self._lock:
            return sorted({t.task for t in self._tasks.values() if t.task})

    def throughput(self, window: float, bucket: int, now: float | None = None) -> tuple[list[float], dict[str, list[int]]]:
        """Per-``bucket``-second counts by state over the last ``window`` seconds: (bucket starts, state -> counts)."""
        now = time.time() if now is None else now
        n = max(1, int(window // bucket))
        start = int(now) - n * bucket + 1
        out = {s: [0] * n for s in STATES}
        with self._lock:
            for second, counter in self._series:
                if second >= start:
                    i = min(n - 1, (second - start) // bucket)
                    for state, c in counter.items():
                        out.setdefault(state, [0] * n)[i] += c
        return [start + i * bucket for i in range(n)], out


def tree(tasks: Iterable[TaskView], root_id: str) -> dict[str, Any]:
    """Nested ``{"task": TaskView|None, "id": ..., "children": [...]}`` from parent ids."""
    by_parent: dict[str | None, list[TaskView]] = {}
    known: dict[str, TaskView] = {}
    for t in tasks:
        known[t.id] = t
        by_parent.setdefault(t.parent_id if t.id != root_id else None, []).append(t)

    def node(task_id: str, depth: int) -> dict[str, Any]:
        kids = sorted(by_parent.get(task_id, []), key=lambda t: t.first_seen) if depth < 50 else []
        return {"id": task_id, "task": known.get(task_id), "children": [node(k.id, depth + 1) for k in kids
                                                                       if k.id != task_id]}

    root = node(root_id, 0)
    # tasks whose parent was evicted or never seen hang under the root, so none disappears
    placed = _ids(root)
    root["children"].extend(node(t.id, 1) for t in known.values() if t.id not in placed and t.parent_id not in known)
    return root


def _ids(node: dict[str, Any]) -> set[str]:
    out = {node["id"]}
    for child in node["children"]:
        out |= _ids(child)
    return out


def _capped(value: Any) -> Any:
    """``value``, or where its JSON is over ``PAYLOAD_CAP`` bytes, ``{"truncated": <bytes>, "preview": <its start>}``:
    ``max_tasks`` tasks of megabyte arguments would otherwise hold gigabytes."""
    if isinstance(value, (int, float, bool)):
        return value
    text = orjson.dumps(value, default=str)
    if len(text) <= PAYLOAD_CAP:
        return value
    return {"truncated": len(text), "preview": text[:PAYLOAD_CAP].decode(errors="ignore")}


def _field(e: dict[str, Any], name: str) -> Any:
    """The event's ``name`` if it has the type that field must have (any type where none is set), else None."""
    value = e.get(name)
    types = FIELD_TYPES.get(name, (str,) if name == "state" else None)
    if value is None or types is None:
        return value
    if isinstance(value, bool) or not isinstance(value, types):
        return None
    return value


def _exc(e: dict[str, Any]) -> str | None:
    if e.get("exc_type"):
        return f"{e['exc_type']}: {e.get('exc_message') or ''}"
    return None
