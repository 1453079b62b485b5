"""``Task``: a registered function and how to send it."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import math
import time
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigError, Replace, Retry
from taskq.message import TaskMessage
from taskq.ratelimit import Rate, RateLimiter, rate_limiter
from taskq.retry import RetryPolicy
from taskq.serialization import JSON
from taskq.topics import task_topics

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.canvas import Canvas, Signature
    from taskq.result import AsyncResult


@dataclass(slots=True)
class Request:
    """What a running task knows about its own invocation (``self.request`` in bound tasks)."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    key: bytes | None = None
    attempts: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    topic: str = ""
    partition: int = -1
    offset: int = -1
    root_id: str | None = None  # None: this task is its own root
    parent_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # stored with the result (e.g. tokens, cost)

    @property
    def root(self) -> str:
        """The root task id of this invocation's workflow (its own id when it has none)."""
        return self.root_id or self.id


class Task:
    """A function registered with an app; call it to run locally, ``delay()`` to queue it."""

    def __init__(
        self,
        app: Taskq,
        fn: Callable[..., Any],
        name: str,
        key: str | None = None,
        partitions: int | None = None,
        bind: bool = False,
        serializer: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        retry: RetryPolicy | None = None,
        unique_for: float | None = None,
        unique_key: Callable[..., str] | None = None,
        batch_size: int = 1,
        batch_wait: float = 0.0,
        priorities: int = 1,
        rate_limit: str | None = None,
        rate_limit_per_key: bool = False,
        strict_order: bool = False,
    ) -> None:
        """``batch_size`` > 1 makes a batch task: the worker calls ``fn(requests)`` with up to that many
        :class:`Request` objects (waiting at most ``batch_wait`` seconds to fill a batch), and ``fn``
        returns one result per request (or None); an exception fails or retries every request."""
        self.app = app
        self.fn = fn
        self.name = name
        self.key = key
        self.partitions = partitions or app.settings.default_partitions
        self.bind = bind
        self.serializer = serializer or app.settings.serializer
        app.serializers.check_accepted(self.serializer, f"task {name!r}")
        self.time_limit = _limit(name, "time_limit", time_limit)
        self.soft_time_limit = _limit(name, "soft_time_limit", soft_time_limit)
        self.retry_policy = retry or RetryPolicy(max_retries=app.settings.default_max_retries)
        if unique_key is not None and not unique_for:
            raise ConfigError(f"task {name}: unique_key needs unique_for=<seconds> (how long a key stays taken)")
        if unique_for is not None and unique_for <= 0:
            raise ConfigError(f"task {name}: unique_for must be a positive number of seconds, not {unique_for}")
        self.unique_for = unique_for
        self.unique_key = unique_key
        if batch_size < 1 or batch_wait < 0:
            raise ConfigError(f"task {name!r}: batch_size must be >= 1 and batch_wait >= 0")
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.rate: Rate | None = Rate.parse(rate_limit) if rate_limit else None
        self.rate_limit_per_key = rate_limit_per_key
        self._limiter: RateLimiter | None = None
        #: called as ``check(task, key)`` before a message is sent; raise to refuse it (budgets, blocks)
        self.send_checks: list[Callable[[Task, str | None], None]] = []
        self.topic = app.topic_for(name)
        if priorities < 1:
            raise ConfigError(f"task {name!r}: priorities is the number of levels (1 or more), not {priorities}")
        self.priorities = priorities
        #: the topic of each priority level: level 0 is the task's topic, level p is "<topic>.p<p>"
        self.topics = task_topics(app.settings.topic_prefix, name, priorities)
        self.is_async = inspect.iscoroutinefunction(fn)
        #: a retry due within settings.strict_order_max_hold waits in the worker, holding its key, so
        #: the key's later tasks run after it (README: "Order per key")
        self.strict_order = strict_order
        self._key_position = _position_of(fn, key, bind)
        self._arity = None if self.is_batch else Arity.of(fn, bind)
        self._request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(f"taskq.request.{name}", default=None)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} topic={self.topic}>"

    @property
    def is_batch(self) -> bool:
        """True when the worker hands this task lists of requests (``batch_size`` > 1)."""
        return self.batch_size > 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run in this process, now (no broker involved)."""
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)

    def add_send_check(self, check: Callable[[Task, str | None], None]) -> Callable[[Task, str | None], None]:
        """Call ``check(task, key)`` before every send of this task; an error it raises reaches the caller
        of ``delay()`` and nothing is sent."""
        self.send_checks.append(check)
        return check

    @property
    def limiter(self) -> RateLimiter:
        """The app's shared rate limiter (Redis or the embedded store)."""
        if self._limiter is None:
            self._limiter = rate_limiter(self.app)
        return self._limiter

    def rate_limit_name(self, key: bytes | None) -> str:
        """The bucket of one run: the task's, or the task's and key's with ``rate_limit_per_key``."""
        if self.rate_limit_per_key and key:
            return f"task:{self.name}:key:{key.decode(errors='replace')}"
        return f"task:{self.name}"

    @property
    def request(self) -> Request:
        """The invocation being run by this thread (bound tasks)."""
        request = self._request.get()
        if request is None:
            raise RuntimeError(f"task {self.name} is not running in a worker here")
        return request

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Queue ``fn(*args, **kwargs)``; returns at once with an :class:`AsyncResult`."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | bytes | None = None,
        task_id: str | None = None,
        headers: dict[str, str] | None = None,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        serializer: str | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        priority: int | None = 0,
        link: Any = None,
        link_error: Any = None,
    ) -> AsyncResult:
        """Queue with options: message ``key`` (ordering), ``countdown``/``eta`` (run later), headers,
        ``priority`` (0 to ``priorities - 1``; higher levels get more of the workers' starts).

        Sent from inside a running task, the new task's parent is that task and its root is that
        task's root (as in Celery); ``root_id``/``parent_id`` set them explicitly (canvas).
        ``link``/``link_error``: signatures to run after success (given the result) or after final
        failure (given the task id and error), see :mod:`taskq.canvas`.
        """
        if link is not None or link_error is not None:
            from taskq.canvas import Signature

            args, kwargs = _call_arguments(args, kwargs)
            options = {k: v for k, v in (("key", key), ("task_id", task_id), ("headers", headers),
                                         ("countdown", countdown), ("eta", eta), ("serializer", serializer),
                                         ("priority", priority or None), ("link", link),
                                         ("link_error", link_error)) if v is not None}
            sig = Signature(self.name, tuple(args), dict(kwargs), options, app=self.app)
            return sig.apply_async(root_id=root_id, parent_id=parent_id)
        message = self.message(args, kwargs, key=key, task_id=task_id, headers=headers, countdown=countdown,
                               eta=eta, root_id=root_id, parent_id=parent_id)  # checks args and kwargs
        topic = self.topic_of(priority or 0)
        claim = self._unique_claim(message.args, message.kwargs) if self.unique_for else None
        if claim is not None:
            holder = self.app.backend.claim(claim, message.id, self.unique_for or 0)
            if holder is not None:  # sent inside the window already: the first call's result
                return self.app.AsyncResult(holder)
        try:
            return self.app.send(message, topic, self.partitions, serializer or self.serializer)
        except BaseException:
            if claim is not None:
                self.app.backend.release(claim, message.id)
            raise

    def topic_of(self, priority: int = 0) -> str:
        """The topic of priority level ``priority``."""
        if not isinstance(priority, int) or not 0 <= priority < self.priorities:
            raise ConfigError(f"task {self.name} has priorities 0-{self.priorities - 1} (higher runs first), "
                              f"not {priority!r}; declare more with @app.task(priorities=N)")
        return self.topics[priority]

    def message(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | bytes | None = None,
        task_id: str | None = None,
        headers: dict[str, str] | None = None,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        canvas: str | None = None,
    ) -> TaskMessage:
        """The message :meth:`apply_async` would send (key from ``key=`` or the task's key argument).

        Options of the wrong type are refused here, at the call, with the option named (a worker
        would otherwise dead-letter the message, or the send fail deep in the client)."""
        args, kwargs = _call_arguments(args, kwargs)
        if self._arity is not None and not self._arity.fits(args, kwargs):
            self._arity.refuse(self.name, args, kwargs)
        if task_id is not None and not isinstance(task_id, str):
            raise ConfigError(f"task_id must be a str, not {type(task_id).__name__}")
        for name, value in (headers or {}).items():
            if not (isinstance(name, str) and isinstance(value, str)):
                raise ConfigError(f"header {name!r}: headers travel as text, so names and values must be str, "
                                  f"not {type(value if isinstance(name, str) else name).__name__}")
        task_id = task_id or new_task_id()
        if key is None and self.key is not None:
            if self.key in kwargs:
                key = str(kwargs[self.key])
            elif self._key_position is not None and self._key_position < len(args):
                key = str(args[self._key_position])
        for check in self.send_checks:
            check(self, key.decode(errors="replace") if isinstance(key, bytes) else key)
        if key is not None and not isinstance(key, (str, bytes)):
            key = str(key)  # as a key taken from the task's key argument
        raw_key = key.encode() if isinstance(key, str) else (task_id.encode() if key is None else key)
        when = _eta(countdown, eta)
        if parent_id is None and (current := self.app.current_request.get()) is not None:
            parent_id = current.id
            root_id = root_id or current.root
        return TaskMessage(task_id, self.name, list(args), kwargs, raw_key, eta=when,
                           headers=dict(headers or {}), root_id=root_id, parent_id=parent_id, canvas=canvas)

    def _unique_claim(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
        """The claim name of a unique task's call: its ``unique_key`` or a digest of its arguments."""
        if self.unique_key is not None:
            ident = str(self.unique_key(*args, **kwargs))
        else:
            try:
                ident = hashlib.sha256(JSON.dumps([list(args), sorted(kwargs.items())])).hexdigest()
            except Exception as exc:
                raise ConfigError(f"task {self.name}: unique_for needs JSON arguments to compare calls, or a "
                                  f"unique_key= function ({exc})") from exc
        return f"unique:{self.app.group}:{self.name}:{ident}"

    def retry(self, exc: BaseException | None = None, countdown: float | None = None) -> Retry:
        """Ask the worker to run this invocation again later; ``raise self.retry(...)`` in a bound task."""
        raise Retry(exc, countdown)

    def replace(self, workflow: Canvas) -> Replace:
        """End this task by sending ``workflow`` in its place: ``raise self.replace(chord(...))``.

        The workflow's result is stored under this task's id, and what followed this task (the rest
        of its chain, its chord) follows the workflow. Ids inside are derived from this task's id, so
        a re-run after a crash sends the same tasks again (skipped as duplicates) rather than new ones.
        """
        raise Replace(workflow.to_dict())

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (a chain passes it the previous result first)."""
        from taskq.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it never receives a previous result, only these arguments."""
        from taskq.canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                  **options: Any) -> Signature:
        """``task.signature(args, kwargs, key=..., countdown=..., headers=...)``, as in Celery."""
        from taskq.canvas import Signature

        return Signature(self.name, tuple(args), dict(kwargs or {}), options, app=self.app)


def new_task_id() -> str:
    """A random 128-bit hex id (uuid4's randomness without its object overhead; reseeded after fork)."""
    return "%032x" % random.getrandbits(128)


def _call_arguments(args: Any, kwargs: Any) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of a call, None for none (as in Celery); other types are refused."""
    if args is None:
        args = ()
    elif not isinstance(args, (list, tuple)):
        raise ConfigError(f"task args must be a list or tuple, not {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        raise ConfigError(f"task kwargs must be a dict, not {type(kwargs).__name__}")
    return args, kwargs


def _eta(countdown: float | None, eta: datetime | float | None) -> float | None:
    """The send's due time (epoch seconds), or None for now."""
    if countdown is not None and eta is not None:
        raise ConfigError("give countdown or eta, not both")
    if countdown is not None:
        return time.time() + countdown if _seconds("countdown", countdown) > 0 else None
    if isinstance(eta, datetime):
        return epoch_of(eta)
    return None if eta is None else _seconds("eta", eta)


def epoch_of(eta: datetime) -> float:
    """``eta`` in epoch seconds; a naive datetime is UTC, as in Celery (``datetime.utcnow() + ...`` is due
    then on every machine, whatever its local time zone)."""
    return (eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)).timestamp()


def _seconds(option: str, value: Any) -> float:
    """``value`` if it is a finite number, else ConfigError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number of seconds{' or a datetime' if option == 'eta' else ''}, "
                          f"not {value!r}")
    return value


def _limit(task: str, option: str, value: float | None) -> float | None:
    """A time limit: None (no limit) or a positive, finite number of seconds; else ConfigError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value < math.inf):
        raise ConfigError(f"task {task!r}: {option} must be a positive number of seconds, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Arity:
    """The arguments a task function takes, checked at each send as Celery does: a call that does not fit
    fails at the call with Python's own TypeError, not later in a worker."""

    signature: inspect.Signature
    bind: bool
    most: int | None  # positional arguments at most (None: it takes *args)
    names: frozenset[str] | None  # keyword names it takes (None: it takes **kwargs)
    positional: tuple[str, ...]  # positional-or-keyword parameters, in order
    required: tuple[str, ...]  # the ones of them without a default
    required_keywords: frozenset[str]  # keyword-only parameters without a default

    @classmethod
    def of(cls, fn: Callable[..., Any], bind: bool) -> Arity | None:
        """None when Python cannot read the signature (some builtins)."""
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        params = list(signature.parameters.values())[1 if bind else 0:]
        kinds = {p.kind for p in params}
        positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        if inspect.Parameter.POSITIONAL_ONLY in kinds:  # rare: leave the call to Python's own check
            return None
        return cls(signature, bind,
                   None if inspect.Parameter.VAR_POSITIONAL in kinds else len(positional),
                   None if inspect.Parameter.VAR_KEYWORD in kinds else frozenset(
                       p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)),
                   positional,
                   tuple(p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty),
                   frozenset(p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty))

    def fits(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bool:
        """Whether ``fn(*args, **kwargs)`` binds (a few comparisons: this runs at every send)."""
        n = len(args)
        if self.most is not None and n > self.most:
            return False
        if not kwargs:
            return n >= len(self.required) and not self.required_keywords
        keys = kwargs.keys()
        if (self.names is not None and not keys <= self.names) or not self.required_keywords <= keys:
            return False
        return all(map(kwargs.__contains__, self.required[n:])) and keys.isdisjoint(self.positional[:n])

    def refuse(self, task: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise Python's TypeError for this call, naming the task."""
        try:
            self.signature.bind(*([None] if self.bind else []), *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {task!r}: {exc} (signature {self.signature})") from None
        raise TypeError(f"task {task!r}: these arguments do not fit its signature {self.signature}")


def _position_of(fn: Callable[..., Any], param: str | None, bind: bool) -> int | None:
    """Index in positional ``args`` of parameter ``param`` (so a key given positionally is found)."""
    if param is None:
        return None
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    if param not in names:
        raise ConfigError(f"task {fn.__qualname__} has no parameter {param!r} to take its key from")
    return names.index(param) - (1 if bind else 0)
