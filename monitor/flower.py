"""``taskq flower``: the real Flower shows taskq workers and tasks.

Flower refuses Kafka broker URLs, and it learns about a cluster in two ways: Celery events on the
``celeryev`` exchange and remote-control replies on the ``celery.pidbox`` mailbox. The bridge does
both over a Redis broker that Flower reads (``celery --broker=redis://... flower``):

- the events thread reads taskq's events topic and republishes each event as the Celery event Flower
  expects, through Celery's own ``EventDispatcher`` (one per worker, so every event carries that
  worker's hostname, timestamp, utcoffset, pid and Lamport clock; heartbeats carry ``freq``; a
  failure or retry carries the traceback stored in the result backend, since events have none);
- the pidbox thread answers ``inspect`` broadcasts (ping, stats with ``total`` and ``broker``,
  registered, active, active_queues, conf, scheduled, reserved, revoked) on behalf of every worker
  heard from, from what its heartbeats and task events said: ``reserved`` is what it received and has
  not started, ``active`` what it runs, ``revoked`` the latest ids it skipped as revoked.
  ``scheduled`` stays empty: eta tasks wait in the delay-tier topics, not in a worker's reserve.
  Flower's ``revoke`` (with ``terminate``) is a taskq revocation (:func:`taskq.revocations.revoke`).

Each thread owns its own kombu connection (kombu connections are not thread-safe); ``Bridge`` state
shared between them is guarded by one lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from taskq.monitor.consumer import EventConsumer
from taskq.app import Taskq
from taskq.config import redact_url

log = logging.getLogger("taskq.flower")
PREFIX = "taskq@"
POSITION_KEPT = 7 * 86400  # seconds the bridge's position is kept in Flower's Redis
REVOKED_KEPT = 10_000  # revoked ids remembered per worker for ``inspect revoked``
RAN = ("task-started", "task-succeeded", "task-failed", "task-retried")  # events of a task that began running
NOT_SENT = "(not in events: events_include_args is off)"  # shown for args, kwargs and result
TRACEBACK_KEPT = 64 * 1024  # characters of a traceback sent to Flower, which keeps each task's in memory
REVOKE_REPEAT = 10.0  # seconds a revoke broadcast (one copy per node) is acted on once


def celery_name(worker: str) -> str:
    """Celery node names are ``name@host``; a taskq worker ``host:pid`` becomes ``taskq@host:pid``."""
    return worker if "@" in worker else PREFIX + worker


@dataclass
class NodeInfo:
    """What the bridge knows about one worker, to answer inspect calls for it."""

    name: str
    pid: int = 0
    pool: str = "threads"
    concurrency: int = 1
    freq: float = 2.0
    processed: int = 0
    online_since: float = field(default_factory=time.time)
    last_seen: float = 0.0
    offline: bool = False
    partitions: list[list[Any]] = field(default_factory=list)
    total: Counter[str] = field(default_factory=Counter)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # received or started, by id
    started: set[str] = field(default_factory=set)
    revoked: deque[str] = field(default_factory=lambda: deque(maxlen=REVOKED_KEPT))

    def alive(self, now: float) -> bool:
        return not self.offline and now - self.last_seen <= max(3 * self.freq, 6.0)


class FlowerBridge:
    """Republish taskq events as Celery events and answer Flower's inspect calls."""

    def __init__(self, app: Taskq, broker_url: str, since: float | None = None) -> None:
        """``since``: republish the events from then on; None resumes where the last bridge for this
        Redis stopped (Flower counts every event it is sent), or starts an hour back the first time."""
        from celery import Celery

        self.app = app
        self.capp = Celery("taskq-flower", broker=broker_url, set_as_current=False)
        self.capp.conf.broker_connection_retry_on_startup = True
        # one position per events topic of one broker (the URL itself may hold a password)
        where = hashlib.sha256(f"{app.broker_url} {app.events_topic}".encode()).hexdigest()[:16]
        self._position_key = f"taskq-flower:position:{where}"
        self._sent_up_to: dict[int, int] = {}  # per events-topic partition: the next offset to send
        start = self._saved_position() if since is None else {}
        if since is None:
            since = 0.0 if start else time.time() - 3600
        self.nodes: dict[str, NodeInfo] = {}
        self.published = 0
        self._lock = threading.Lock()
        self._revokes: dict[tuple[tuple[str, ...], bool], float] = {}  # recent revoke broadcasts
        self._events: queue.Queue[dict[str, Any] | tuple[int, int]] = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self.consumer = EventConsumer(app, [self._enqueue], since=since, start=start,
                                      on_record=lambda p, o: self._events.put((p, o)))
        self._threads = [threading.Thread(target=self._publish_loop, name="taskq-flower-events", daemon=True),
                         threading.Thread(target=self._pidbox_loop, name="taskq-flower-pidbox", daemon=True)]

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FlowerBridge:
        for t in self._threads:
            t.start()
        self.consumer.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.consumer.stop(timeout)
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._save_position()

    # -- where to resume: the events sent to Flower, kept in its Redis --------------------------------

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.capp.conf.broker_url, socket_timeout=5)

    def _saved_position(self) -> dict[int, int]:
        try:
            raw = self._redis().get(self._position_key)
            return {int(p): int(o) for p, o in json.loads(raw).items()} if raw else {}
        except Exception as exc:  # noqa: BLE001 - then the bridge starts an hour back
            log.warning("cannot read where the last bridge stopped (%s); starting an hour back", exc)
            return {}

    def _save_position(self) -> None:
        if not self._sent_up_to:
            return
        try:
            self._redis().set(self._position_key, json.dumps(self._sent_up_to), ex=POSITION_KEPT)
        except Exception as exc:  # noqa: BLE001 - saved again a second later
            log.warning("cannot save the bridge's position: %s", exc)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- events: taskq -> Celery --------------------------------------------------------------------

    def _enqueue(self, event: dict[str, Any]) -> None:
        # a worker coalesces a quick task's received and started events into its next one
        # (events_coalesce); Flower counts and times each, as a Celery worker sends them all
        for kind in self._track(event):
            at = event.get("received" if kind == "task-received" else "started")
            self._events.put({**event, "type": kind, "ts": at or event.get("ts")})
        self._events.put(event)  # blocks the reader when Redis is slow: back-pressure, not loss

    def _track(self, e: dict[str, Any]) -> list[str]:
        """Keep what inspect replies need: per worker, totals by task name and the tasks running now.
        Returns the earlier events of the task that this worker's events did not tell (coalesced)."""
        worker = e.get("worker")
        if not isinstance(worker, str):
            return []
        name = celery_name(worker)
        kind = e.get("type", "")
        untold = []
        with self._lock:
            node = self.nodes.setdefault(name, NodeInfo(name))
            node.last_seen = max(node.last_seen, float(e.get("ts") or 0))
            if kind.startswith("worker-"):
                node.pid = int(e.get("pid") or 0)
                node.pool = str(e.get("pool") or node.pool)
                node.concurrency = int(e.get("concurrency") or node.concurrency)
                node.freq = float(e.get("freq") or node.freq)
                node.processed = int(e.get("processed") or 0)
                node.partitions = list(e.get("partitions") or [])
                node.offline = kind == "worker-offline"
                if kind == "worker-online":
                    node.online_since = float(e.get("ts") or time.time())
            if kind.startswith("task-") and not isinstance(e.get("id"), str):
                return []  # a message with no id (dead-lettered as rejected): no task to list or count
            if kind in RAN:
                if e["id"] not in node.tasks:
                    untold.append("task-received")
                if kind != "task-started" and e["id"] not in node.started:
                    untold.append("task-started")
            if kind in ("task-received", "task-started"):
                if kind == "task-started":
                    node.started.add(e["id"])
                node.tasks[e["id"]] = {
                    "id": e["id"], "name": e.get("task"), "args": _repr(e, "args"),
                    "kwargs": _repr(e, "kwargs"), "type": e.get("task"), "hostname": name,
                    "time_start": e.get("started"), "acknowledged": True, "worker_pid": node.pid,
                    "delivery_info": {"exchange": "", "routing_key": e.get("topic"), "priority": 0,
                                      "redelivered": (e.get("attempt") or 1) > 1},
                }
            elif kind in ("task-succeeded", "task-failed", "task-retried", "task-rejected", "task-revoked",
                          "task-skipped"):
                node.tasks.pop(str(e.get("id")), None)
                node.started.discard(str(e.get("id")))
                if _revoked(e):
                    node.revoked.append(str(e.get("id")))
                if kind in ("task-succeeded", "task-failed") and e.get("task"):
                    node.total[e["task"]] += 1
        return untold

    def _publish_loop(self) -> None:
        dispatchers: dict[str, Any] = {}
        connection = None
        saved = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - saved >= 1.0:
                saved = time.monotonic()
                self._save_position()
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(event, tuple):  # every event of this record was sent (or had no Celery twin)
                self._sent_up_to[event[0]] = event[1] + 1
                continue
            converted = to_celery(event)
            if converted is None:
                continue
            kind, hostname, pid, fields = converted
            if "traceback" in fields:
                fields["traceback"] = self._traceback(fields["uuid"])
            try:
                if connection is None:
                    connection = self.capp.connection_for_write()
                    connection.ensure_connection(max_retries=3)
                dispatcher = dispatchers.get(hostname)
                if dispatcher is None:
                    dispatcher = dispatchers[hostname] = self.capp.events.Dispatcher(
                        connection, hostname=hostname, enabled=True, buffer_while_offline=False)
                dispatcher.pid = pid or dispatcher.pid
                dispatcher.send(kind, retry=True, **fields)
                self.published += 1
            except Exception as exc:  # noqa: BLE001 - Redis down: drop the connection, keep reading
                log.warning("cannot publish Celery event %s: %s", kind, exc)
                for d in dispatchers.values():
                    _quiet(d.close)
                dispatchers.clear()
                if connection is not None:
                    _quiet(connection.release)
                connection = None
                self._stop.wait(1.0)
        for d in dispatchers.values():
            _quiet(d.close)
        if connection is not None:
            _quiet(connection.release)

    def _traceback(self, task_id: str) -> str:
        """The traceback stored with a task's failure or retry (events carry none), else ''."""
        try:
            record = self.app.backend.get(task_id)
        except Exception as exc:  # noqa: BLE001 - the event goes on without its traceback
            log.debug("no traceback for %s: %s", task_id, exc)
            return ""
        tb = (record.traceback if record is not None else None) or ""
        if len(tb) <= TRACEBACK_KEPT:
            return tb
        half = TRACEBACK_KEPT // 2
        return f"{tb[:half]}\n... ({len(tb) - 2 * half} characters left out) ...\n{tb[-half:]}"

    # -- pidbox: Flower's inspect calls -------------------------------------------------------------

    def _pidbox_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_pidbox()
            except Exception as exc:  # noqa: BLE001 - Redis down: start over after a pause
                log.warning("pidbox: %s; reconnecting", exc)
                self._stop.wait(1.0)

    def _serve_pidbox(self) -> None:
        with self.capp.connection_for_read() as connection:
            connection.ensure_connection(max_retries=3)
            mailbox = self.capp.control.mailbox(connection)
            consumers: dict[str, Any] = {}
            try:
                while not self._stop.is_set():
                    now = time.time()
                    with self._lock:
                        alive = {n for n, info in self.nodes.items() if info.alive(now)}
                    for name in alive - set(consumers):
                        node = mailbox.Node(name, state=self, handlers=self.node_handlers(name),
                                            channel=connection.channel())
                        consumers[name] = node.listen(callback=node.handle_message)
                    for name in set(consumers) - alive:
                        _quiet(consumers.pop(name).cancel)
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass
                    except OSError as exc:
                        if "timed out" not in str(exc):
                            raise
            finally:
                for c in consumers.values():
                    _quiet(c.cancel)

    def handlers(self) -> dict[str, Any]:
        """Remote-control commands that every node answers alike; any other is refused with a reason."""
        return _Unsupported({"ping": lambda state, **kw: {"ok": "pong"},
                "conf": lambda state, **kw: self._conf(),
                "scheduled": lambda state, **kw: [],
                "clock": lambda state, **kw: {"clock": self.capp.clock.value},
                # taskq workers always publish events: Flower's periodic enable_events is acknowledged
                "enable_events": lambda state, **kw: {"ok": "task events enabled"},
                "disable_events": lambda state, **kw: {"ok": "taskq workers always publish events"},
                "report": lambda state, **kw: {"ok": "taskq worker (via taskq flower)"}})

    def _conf(self) -> dict[str, Any]:
        s = self.app.settings
        return {"broker_url": redact_url(self.app.broker_url),
                "result_backend": redact_url(s.result_backend or ""),
                "task_serializer": s.serializer, "accept_content": list(s.accept_content),
                "result_expires": s.result_expires, "taskq_group": self.app.group,
                "taskq_topic_prefix": s.topic_prefix, "include": sorted({t.fn.__module__ for t in self.app.tasks.values()})}

    def node_handlers(self, name: str) -> dict[str, Any]:
        """The handlers of one node (stats, active and active_queues depend on which worker asks)."""
        handlers = self.handlers()
        handlers["stats"] = lambda state, **kw: self.stats(name)
        handlers["registered"] = lambda state, **kw: self.registered(name)
        handlers["active"] = lambda state, **kw: self.active(name)
        handlers["reserved"] = lambda state, **kw: self.reserved(name)
        handlers["revoked"] = lambda state, **kw: self.revoked(name)
        handlers["active_queues"] = lambda state, **kw: self.active_queues(name)
        handlers["revoke"] = lambda state, task_id, terminate=False, **kw: self.revoke(task_id, terminate)
        return handlers

    def revoke(self, task_id: str | list[str], terminate: bool = False) -> dict[str, str]:
        """Flower's revoke as a taskq revocation. A broadcast reaches every node the bridge answers for:
        the copies that follow the first within ``REVOKE_REPEAT`` s are not acted on again."""
        from taskq.revocations import revoke

        ids = tuple([task_id] if isinstance(task_id, str) else task_id)
        now = time.monotonic()
        with self._lock:
            self._revokes = {k: t for k, t in self._revokes.items() if now - t < REVOKE_REPEAT}
            repeat = (ids, bool(terminate)) in self._revokes
            self._revokes[(ids, bool(terminate))] = now
        if not repeat:
            revoke(self.app, ids, bool(terminate))
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def stats(self, name: str) -> dict[str, Any]:
        with self._lock:
            node = self.nodes.get(name) or NodeInfo(name)
            total = dict(node.total)
        broker = urlsplit(self.app.broker_url)
        return {
            "total": total, "pid": node.pid, "clock": str(self.capp.clock.value),
            "uptime": int(time.time() - node.online_since), "prefetch_count": node.concurrency,
            "pool": {"max-concurrency": node.concurrency, "implementation": f"taskq:{node.pool}",
                     "processes": [node.pid], "max-tasks-per-child": "N/A", "put-guarded-by-semaphore": False,
                     "timeouts": [0, 0]},
            "broker": {"hostname": broker.hostname or broker.path, "port": broker.port, "transport": broker.scheme,
                       "userid": None, "virtual_host": "/", "insist": False, "ssl": False, "login_method": None,
                       "heartbeat": None, "connect_timeout": self.app.settings.connect_timeout,
                       "uri_prefix": None, "transport_options": {}},
            "rusage": {}, "taskq": {"processed": node.processed, "partitions": node.partitions},
        }

    def registered(self, name: str) -> list[str]:
        """The app's tasks (``-A``) and every task this worker was seen running."""
        with self._lock:
            node = self.nodes.get(name)
            seen = set(node.total) | {str(t["name"]) for t in node.tasks.values() if t.get("name")} if node else set()
        return sorted(set(self.app.tasks) | seen)

    def active(self, name: str) -> list[dict[str, Any]]:
        """The tasks the worker has started and not finished."""
        with self._lock:
            node = self.nodes.get(name)
            return [t for i, t in node.tasks.items() if i in node.started] if node else []

    def reserved(self, name: str) -> list[dict[str, Any]]:
        """The tasks the worker has received and not started yet."""
        with self._lock:
            node = self.nodes.get(name)
            return [t for i, t in node.tasks.items() if i not in node.started] if node else []

    def revoked(self, name: str) -> list[str]:
        """The latest task ids the worker skipped as revoked."""
        with self._lock:
            node = self.nodes.get(name)
            return list(node.revoked) if node else []

    def active_queues(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            node = self.nodes.get(name)
            topics = sorted({str(tp[0]) for tp in node.partitions}) if node else []
        return [{"name": t, "exchange": {"name": t, "type": "direct", "durable": True, "auto_delete": False,
                                         "delivery_mode": 2, "passive": False, "arguments": None},
                 "routing_key": t, "durable": True, "exclusive": False, "auto_delete": False, "no_ack": False,
                 "alias": None, "queue_arguments": None, "binding_arguments": None, "consumer_arguments": None,
                 "bindings": [], "expires": None, "message_ttl": None, "max_length": None,
                 "max_length_bytes": None, "max_priority": None} for t in topics]


def to_celery(e: dict[str, Any]) -> tuple[str, str, int, dict[str, Any]] | None:
    """(Celery event type, hostname, pid, fields) for a taskq event; None for events Celery has no twin of."""
    kind = "task-revoked" if _revoked(e) else e.get("type")
    worker = e.get("worker")
    ts = float(e.get("ts") or time.time())
    if kind in ("worker-online", "worker-heartbeat", "worker-offline"):
        if not isinstance(worker, str):
            return None
        return kind, celery_name(worker), int(e.get("pid") or 0), {
            "timestamp": ts, "freq": float(e.get("freq") or 2.0), "sw_ident": "taskq", "sw_ver": _version(),
            "sw_sys": platform.system(), "active": int(e.get("active") or 0),
            "processed": int(e.get("processed") or 0), "loadavg": [0.0, 0.0, 0.0]}
    task_id = e.get("id")
    if not isinstance(task_id, str):
        return None
    hostname = celery_name(worker) if isinstance(worker, str) else "taskq@client"
    base = {"uuid": task_id, "timestamp": ts}
    exc = f"{e.get('exc_type') or 'Exception'}({e.get('exc_message') or ''!r})"
    # a worker coalesces the received and started events of a quick task into its outcome event
    # (events_coalesce): the outcome then names the task, as task-received would have
    ident = {"name": e.get("task"), "args": _repr(e, "args"), "kwargs": _repr(e, "kwargs"),
             "retries": max(0, int(e.get("attempt") or 1) - 1), "root_id": e.get("root_id"),
             "parent_id": e.get("parent_id")}
    if kind == "task-sent":
        fields = {**base, "name": e.get("task"), "args": _repr(e, "args"),
                  "kwargs": _repr(e, "kwargs"), "retries": 0, "eta": None, "expires": None,
                  "queue": e.get("topic"), "exchange": "", "routing_key": e.get("topic"),
                  "root_id": e.get("root_id"), "parent_id": e.get("parent_id")}
    elif kind == "task-received":
        fields = {**base, "name": e.get("task"), "args": _repr(e, "args"),
                  "kwargs": _repr(e, "kwargs"), "retries": max(0, int(e.get("attempt") or 1) - 1),
                  "eta": None, "expires": None, "root_id": e.get("root_id"), "parent_id": e.get("parent_id")}
    elif kind == "task-started":
        fields = base
    elif kind == "task-succeeded":
        fields = {**base, **ident, "result": _repr(e, "result"), "runtime": e.get("runtime") or 0.0}
    elif kind == "task-failed":
        fields = {**base, **ident, "exception": exc, "traceback": "", "runtime": e.get("runtime") or 0.0}
    elif kind == "task-retried":
        fields = {**base, **ident, "exception": exc, "traceback": ""}
    elif kind == "task-rejected":
        fields = {**base, "requeue": False}
    elif kind == "task-revoked":
        fields = {**base, "terminated": False, "signum": None, "expired": False}
    else:  # task-dead (task-failed came first), task-skipped (an earlier run finished it)
        return None
    pid = 0
    return str(kind), hostname, pid, fields


class _Unsupported(dict[str, Any]):
    """Pidbox handlers whose missing commands (pool grow/shrink, autoscale, shutdown, rate limit, time limits,
    queues) reply with what to do instead: Flower shows a call's reply as the reason it failed."""

    def __missing__(self, method: str) -> Any:
        def refuse(state: Any, **kw: Any) -> dict[str, str]:
            log.warning("Flower asked for %s: taskq workers do not take it from Flower", method)
            return {"error": f"taskq workers do not support {method} from Flower: concurrency, pools, rate and "
                             "time limits are set where the worker starts (taskq worker -c/--pool, @app.task)"}
        return refuse


def _revoked(e: dict[str, Any]) -> bool:
    """A task-revoked event, or a task-skipped one for a task revoked before a worker took it."""
    return e.get("type") == "task-revoked" or (e.get("type") == "task-skipped" and e.get("state") == "REVOKED")


def _repr(e: dict[str, Any], name: str) -> str:
    """How Flower shows an event's args, kwargs or result: Python's repr, or a note when the worker leaves
    them out of events (``events_include_args`` off), which an empty ``()`` would misrepresent."""
    if name not in e:
        return NOT_SENT
    value = e[name]
    return repr(tuple(value) if name == "args" and isinstance(value, list) else value)


def _version() -> str:
    import taskq

    return taskq.__version__


def _quiet(fn: Any) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - closing after an error
        log.debug("ignored while closing: %s", exc)
