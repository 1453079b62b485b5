"""``Taskq``: the application object holding settings, the task registry, broker and backend."""

from __future__ import annotations

import contextvars
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import urlsplit

from taskq.brokers.base import Broker, Headers, Producer, Record
from taskq.config import Settings, redact_url
from taskq.errors import BrokerError, ConfigError, DeliveryTimedOut, NotRegistered
from taskq.hooks import Hook
from taskq.message import H_ORIGIN, TaskMessage
from taskq.result import AsyncResult
from taskq.results.base import ResultBackend
from taskq.retry import RetryPolicy
from taskq.serialization import Registry
from taskq.task import Request, Task
from taskq.topics import collision_key, dlq_topic, events_topic, is_legal, task_topic, tier_topic, tier_topics

if TYPE_CHECKING:
    from taskq.schedules import Periodic

log = logging.getLogger("taskq")


class Taskq:
    """A taskq application.

    >>> app = Taskq("shop", broker="kafka://127.0.0.1:9092", backend="redis://127.0.0.1:6379/0")
    >>> @app.task(key="user_id")
    ... def infer(prompt: str, user_id: str) -> str: ...
    """

    def __init__(self, name: str = "taskq", broker: str | None = None, backend: str | None = None,
                 **settings: Any) -> None:
        self.name = name
        self.settings = Settings.build({"broker_url": broker, "result_backend": backend, **settings})
        self.tasks: dict[str, Task] = {}
        self._topic_owners: dict[str, str] = {}  # collision key of each registered task topic -> task name
        self.schedules: dict[str, Periodic] = {}
        self.serializers = Registry(self.settings.accept_content)
        self.serializers.check_accepted(self.settings.serializer, f"app {name!r}")
        self.group = self.settings.group or f"taskq.{name}"
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._backend_lock = threading.Lock()  # its own: making the backend imports a client library, slowly
        self._delivery_errors: list[tuple[str, BaseException]] = []
        self._ensured: set[str] = set()
        self.hooks: list[Hook] = []
        self.startup_checks: list[tuple[Callable[[], object], frozenset[str] | None]] = []
        #: the task invocation running in this thread or coroutine (its children take it as parent)
        self.current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
            f"taskq.current.{name}", default=None)

    def __repr__(self) -> str:
        return f"<Taskq {self.name} broker={redact_url(self.broker_url)}>"

    # -- registry ---------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any]) -> Task: ...
    @overload
    def task(self, fn: None = None, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Register ``fn`` as a task: ``@app.task`` or ``@app.task(name=..., key=..., max_retries=...)``."""
        if fn is None:
            return lambda f: self._register(f, **options)
        return self._register(fn, **options)

    def _register(self, fn: Callable[..., Any], name: str | None = None, **options: Any) -> Task:
        name = name or f"{fn.__module__}.{fn.__qualname__}"
        retry_fields = {k: options.pop(k) for k in list(options) if k in RetryPolicy.__dataclass_fields__}
        retry_fields.setdefault("max_retries", self.settings.default_max_retries)
        known = {"key", "partitions", "bind", "serializer", "time_limit", "soft_time_limit", "unique_for", "unique_key",
                 "batch_size", "batch_wait", "priorities", "rate_limit", "rate_limit_per_key", "strict_order"}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown task option(s) {sorted(unknown)} for task {name!r}")
        task = Task(self, fn, name, retry=RetryPolicy(**retry_fields), **options)
        if name in self.tasks and self.tasks[name].fn is not fn:
            raise ConfigError(f"task name {name!r} is registered twice")
        for topic in task.topics:
            owner = self._topic_owners.get(collision_key(topic), name)
            if owner != name:
                raise ConfigError(f"task {name!r} and task {owner!r} would share a Kafka topic ({topic!r}; Kafka "
                                  "reads '.' and '_' in topic names as the same): rename one of them")
        self._topic_owners.update((collision_key(topic), name) for topic in task.topics)
        self.tasks[name] = task
        return task

    def periodic_task(self, fn: Callable[..., Any] | None = None, *, cron: str | None = None,
                      every: timedelta | float | None = None, args: tuple[Any, ...] | list[Any] = (),
                      kwargs: dict[str, Any] | None = None, schedule_name: str | None = None,
                      **options: Any) -> Any:
        """A task that ``taskq beat`` sends on a schedule: ``@app.periodic_task(cron="*/5 * * * *")``
        or ``@app.periodic_task(every=timedelta(seconds=30))``; other options as for ``@app.task``."""
        def register(f: Callable[..., Any]) -> Task:
            task = self._register(f, **options)
            self.add_periodic(task, cron=cron, every=every, args=args, kwargs=kwargs, name=schedule_name)
            return task
        return register if fn is None else register(fn)

    def add_periodic(self, task: Task | str, *, cron: str | None = None, every: timedelta | float | None = None,
                     args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
                     name: str | None = None, key: str | None = None) -> Periodic:
        """Schedule a registered task (one task may have several schedules, each with its own ``name``)."""
        task_name = task if isinstance(task, str) else task.name
        self.get_task(task_name)
        name = name or task_name
        if name in self.schedules:
            raise ConfigError(f"schedule {name!r} is declared twice; give the second one its own name=")
        from taskq.schedules import Periodic  # here: a worker without schedules need not import it

        schedule = self.schedules[name] = Periodic.build(name, task_name, cron, every, args, kwargs, key)
        return schedule

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(name) from None

    def topic_for(self, task_name: str) -> str:
        """The topic of task ``task_name`` (ConfigError when Kafka would refuse the name)."""
        return task_topic(self.settings.topic_prefix, task_name)

    def dlq_topic(self, topic: str) -> str:
        return dlq_topic(topic)

    @property
    def delay_topics(self) -> list[str]:
        return tier_topics(self.group, self.settings.retry_tiers)

    def delay_topic(self, delay: float) -> str:
        """The delay-tier topic for a message due in ``delay`` seconds."""
        return tier_topic(self.group, self.settings.retry_tiers, delay)

    @property
    def events_topic(self) -> str:
        """Where workers publish task and worker events (``<topic_prefix>events`` unless set)."""
        topic = self.settings.events_topic or events_topic(self.settings.topic_prefix)
        if not is_legal(topic):
            raise ConfigError(f"events topic {topic!r} is not a valid Kafka topic name")
        return topic

    # -- hooks ------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> Hook:
        """Register a worker hook (a :class:`taskq.hooks.Hook`); workers started afterwards call it."""
        if not isinstance(hook, Hook):
            raise ConfigError(f"{hook!r} is not a taskq.hooks.Hook: subclass it and override its methods")
        self.hooks.append(hook)
        return hook

    def add_startup_check(self, check: Callable[[], object], tasks: Iterable[str] | None = None,
                          ) -> Callable[[], object]:
        """Register ``check()``, called by ``taskq worker`` before it consumes: raise a :class:`TaskqError`
        (e.g. a missing API key, naming the variable) and the worker does not start. With ``tasks``
        (names), only workers that consume one of them run it."""
        self.startup_checks.append((check, frozenset(tasks) if tasks is not None else None))
        return check

    def run_startup_checks(self, tasks: Iterable[str] | None = None) -> None:
        """Run the startup checks of a worker consuming ``tasks`` (default: every task); the first error
        stops here."""
        names = set(self.tasks if tasks is None else tasks)
        for check, only in self.startup_checks:
            if only is None or only & names:
                check()

    # -- connections ------------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        return self.settings.broker_url or f"local://{self.local_path}"

    @property
    def local_path(self) -> str:
        path = self.settings.local_path or str(Path.home() / ".taskq" / f"{self.name}.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = self._make_broker(self.broker_url)
        return self._broker

    def _make_broker(self, url: str) -> Broker:
        scheme = urlsplit(url).scheme
        if scheme == "kafka":
            from taskq.brokers.kafka import KafkaBroker

            return KafkaBroker(url, connect_timeout=self.settings.connect_timeout)
        if scheme == "local":
            from taskq.brokers.local import LocalBroker

            return LocalBroker(url)
        raise ConfigError(f"unknown broker URL {redact_url(url)!r}: use kafka://host:port or local:///path/file.db")

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> ResultBackend:
        url = self.settings.result_backend
        expires = self.settings.result_expires
        if not url:
            if not self.broker_url.startswith("local://"):
                raise ConfigError("result_backend is not set: pass backend='redis://host:port/0' "
                                  "or set TASKQ_RESULT_BACKEND")
            url = self.broker_url
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            from taskq.results.redis import READ_TIMEOUT, RedisBackend

            # an answer waited for longer than outage_timeout would let an outage outlast its bound
            read_timeout = min(max(self.settings.connect_timeout, READ_TIMEOUT), self.settings.outage_timeout)
            return RedisBackend(url, expires, connect_timeout=self.settings.connect_timeout, read_timeout=read_timeout)
        if scheme == "local":
            from taskq.brokers.local import path_from_url
            from taskq.results.local import LocalBackend

            return LocalBackend(path_from_url(url), expires)
        raise ConfigError(f"unknown result backend URL {redact_url(url)!r}: use redis://host:port/db or local:///path")

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            broker = self.broker  # before the lock: making the broker takes it too
            with self._lock:
                if self._producer is None:
                    options = dict(self.settings.producer_options)
                    if self.broker_url.startswith("kafka://"):
                        options.setdefault("message.timeout.ms", int(self.settings.send_timeout * 1000))
                    self._producer = broker.producer(**options)
        return self._producer

    # -- sending ----------------------------------------------------------------------------------

    def send(self, message: TaskMessage, topic: str, partitions: int, serializer: str = "json") -> AsyncResult:
        """Produce ``message`` to ``topic`` (or to a delay tier when it has a future eta)."""
        producer = self.producer  # first: its connection and producer id are set up while topics are checked
        target, key, value, headers = self.outgoing(message, topic, partitions, serializer)
        producer.produce(target, key, value, headers, on_delivery=self._delivery_reporter(message.id))
        producer.poll(0)
        return AsyncResult(message.id, self)

    def outgoing(self, message: TaskMessage, topic: str, partitions: int, serializer: str = "json",
                 ) -> tuple[str, bytes | None, bytes, Headers]:
        """(target topic, key, value, headers) of ``message``: its task topic, or a delay tier when due later.

        Ensures the topics exist. The worker uses it for canvas follow-ups, which it sends itself.
        """
        value, headers = message.encode(self.serializers, serializer)
        self.ensure_topic(topic, partitions)
        target = topic
        if message.eta is not None and message.eta > time.time():
            target = self.delay_topic(message.eta - time.time())
            headers.append((H_ORIGIN, topic.encode()))
            self.ensure_topics({t: partitions for t in self.delay_topics})
        return target, message.key, value, headers

    def _delivery_reporter(self, task_id: str) -> Callable[[BaseException | None, Record | None], None]:
        def report(err: BaseException | None, _record: Record | None) -> None:
            if err is not None:
                log.error("task %s was not delivered: %s", task_id, err)
                self._delivery_errors.append((task_id, err))
        return report

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every sent task is acknowledged by the broker; raise if any was not."""
        if self._producer is not None:
            # a little past send_timeout, so that a message the broker never took reports its own error
            left = self._producer.flush(self.settings.send_timeout + 5 if timeout is None else timeout)
            if left:
                raise BrokerError(f"{left} task message(s) still unacknowledged after flush; is the broker up?")
        if self._delivery_errors:
            failed, self._delivery_errors = self._delivery_errors, []
            timed_out = [task_id for task_id, err in failed if isinstance(err, DeliveryTimedOut)]
            if len(timed_out) == len(failed):  # each may have been written: its task may still arrive and run
                raise DeliveryTimedOut(f"{len(failed)} task message(s) were not acknowledged within send_timeout "
                                       f"and may still arrive (check AsyncResult(id) before sending one again), "
                                       f"first {failed[0][0]}: {failed[0][1]}")
            raise BrokerError(f"{len(failed)} task message(s) were not delivered ({len(timed_out)} of them not "
                              f"acknowledged in time: those may still arrive), first {failed[0][0]}: {failed[0][1]}")

    def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` if missing. The first time one registered task's topic is asked for, every
        registered task's topics come with it: one CreateTopics round trip for all task types, not one each."""
        if topic not in self._ensured:
            topics = {topic: partitions}
            if any(topic in t.topics for t in self.tasks.values()):
                topics = {**self.task_topics(), **topics}
            self.ensure_topics(topics)

    def task_topics(self) -> dict[str, int]:
        """Every registered task's topics (each priority level) and their partition counts."""
        return {topic: t.partitions for t in self.tasks.values() for topic in t.topics}

    def ensure_topics(self, topics: dict[str, int]) -> set[str]:
        """Create the topics that are missing; returns those it created."""
        missing = {t: n for t, n in topics.items() if t not in self._ensured}
        if not missing:
            return set()
        created = self.broker.ensure_topics(missing, self.settings.replication_factor)
        self._ensured.update(missing)
        return created

    def recreate_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` again when it was deleted after this app ensured it."""
        self._ensured.discard(topic)
        self.broker.forget_topic(topic)
        self.ensure_topics({topic: partitions})

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self)

    def close(self) -> None:
        """Flush pending messages and close connections."""
        if self._producer is not None:
            self._producer.flush(self.settings.send_timeout)
            self._producer = None
        if self._backend is not None:
            self._backend.close()
        if self._broker is not None:
            self._broker.close()

    def __enter__(self) -> Taskq:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_app(spec: str) -> Taskq:
    """The app named by ``-A``: ``module``, ``module.attribute`` or ``module:attribute`` (Celery's forms).

    For a module, its attribute ``app`` or else its only :class:`Taskq`. ConfigError names ``spec``
    when nothing is found.
    """
    if spec.endswith(".py") or "/" in spec:  # a file path: -A takes the module's name, as in Celery
        name = spec.removeprefix("./").removesuffix(".py").replace("/", ".")
        raise ConfigError(f"cannot load app {spec!r}: -A takes a module name, not a file: -A {name}")
    module_name, colon, attr = spec.partition(":")
    if not colon:
        module = _import(spec, spec, missing_ok=True)
        if module is None and "." in spec:  # module.attribute
            module_name, _, attr = spec.rpartition(".")
        elif module is None:
            raise ConfigError(f"cannot load app {spec!r}: no module named {spec!r}")
        else:
            return _app_in(module, spec)
    module = _import(module_name, spec)
    assert module is not None
    found = getattr(module, attr, None) if attr else module
    if found is None:  # package:submodule not imported yet
        found = _import(f"{module_name}.{attr}", spec, missing_ok=True)
    if isinstance(found, ModuleType):
        return _app_in(found, spec)
    if not isinstance(found, Taskq):
        what = "nothing" if found is None else f"a {type(found).__name__}"
        raise ConfigError(f"cannot load app {spec!r}: {module_name}.{attr} is {what}, not a Taskq app")
    return found


def _import(name: str, spec: str, missing_ok: bool = False) -> ModuleType | None:
    """Import ``name``; None when ``missing_ok`` and that module itself (not one it imports) is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if missing_ok and exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise ConfigError(f"cannot load app {spec!r}: importing {name} failed: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"cannot load app {spec!r}: importing {name} failed: {exc}") from exc


def _app_in(module: ModuleType, spec: str) -> Taskq:
    """``module.app`` if it is a Taskq, else the only Taskq among the module's attributes."""
    app = getattr(module, "app", None)
    if isinstance(app, Taskq):
        return app
    apps = {name for name, value in vars(module).items() if isinstance(value, Taskq)}
    if len(apps) == 1:
        return getattr(module, apps.pop())
    if apps:
        raise ConfigError(f"cannot load app {spec!r}: module {module.__name__} has several Taskq apps "
                          f"({', '.join(sorted(apps))}); name one as module:attribute")
    raise ConfigError(f"cannot load app {spec!r}: module {module.__name__} has no Taskq app "
                      "(define app = Taskq(...) there, or name it as module:attribute)")
