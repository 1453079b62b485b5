"""Canvas: signatures, chains, groups and chords (the workflow API, as in Celery).

Every element turns into plain data (``to_dict``, JSON) and is sent as task messages that carry what
follows them in their ``canvas`` header (:mod:`taskq.flow`): the rest of a chain, chord membership,
callbacks. No coordinator process: the worker that finishes a task sends what comes next, durably,
before it commits the offset.

Ids are assigned when an element is frozen (at send time at the latest), so results can be waited on
before the tasks exist: a chain's result is its last task's, a chord's result is its body's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from datetime import datetime
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigError, TimeoutError
from taskq.result import AsyncResult
from taskq.serialization import JSON
from taskq.task import epoch_of, new_task_id

if TYPE_CHECKING:
    from taskq.app import Taskq

#: send options a signature may carry (besides ``link`` / ``link_error``)
SEND_OPTIONS = frozenset({"task_id", "key", "countdown", "eta", "headers", "serializer", "priority"})


class Canvas(ABC):
    """Common base: something that can be frozen (ids assigned), serialized and sent."""

    app: Taskq | None

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (see :func:`from_dict`)."""

    @abstractmethod
    def freeze(self) -> str:
        """Assign every missing id (idempotent); returns the id whose result is this element's result."""

    @abstractmethod
    def result(self, app: Taskq) -> AsyncResult | GroupResult:
        """The handle on this (frozen) element's result."""

    def to_json(self) -> str:
        return JSON.dumps(self.to_dict()).decode()

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                    root_id: str | None = None, parent_id: str | None = None) -> AsyncResult | GroupResult:
        """Send: ``args`` go before each first task's own arguments, ``kwargs`` are merged into them."""
        from taskq import flow

        app = self._app()
        self.freeze()
        element = self.to_dict()
        if kwargs:
            element = flow.with_kwargs(element, kwargs)
        flow.send(app, element, tuple(args), root_id, parent_id)
        return self.result(app)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | GroupResult:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Canvas) -> Chain:
        if not isinstance(other, Canvas):
            return NotImplemented
        return Chain(*_chain_items(self), *_chain_items(other), app=self.app or other.app)

    def _app(self) -> Taskq:
        if self.app is None:
            raise ConfigError(f"{self!r} has no app: build it from tasks (task.s()) or pass app=")
        return self.app


class Signature(Canvas):
    """``task.s(*args, **kwargs)``: one task call as data. ``immutable`` ones (``task.si``) never get a
    previous result prepended to their arguments.

    Options: ``task_id``, ``key``, ``countdown``, ``eta``, ``headers``, ``serializer``, ``priority``, and callbacks
    ``link`` (run with the result after success) and ``link_error`` (run with ``(task_id, error)``
    after the final failure; ``error`` is ``"ExceptionType: message"``).
    """

    def __init__(self, task: str, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None, immutable: bool = False, app: Taskq | None = None) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options: dict[str, Any] = {}
        self.immutable = immutable
        self.app = app
        self.set(**(options or {}))

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}{'.si' if self.immutable else ''}({call})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_dict() == other.to_dict()

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    def set(self, **options: Any) -> Signature:
        """Add send options (``key=``, ``countdown=``, ``headers=``, ``link=``, ...); returns self."""
        for name, value in options.items():
            if name in ("link", "link_error"):
                self.options[name] = [*self.options.get(name, []), *_callbacks(value, self.app)]
            elif name == "eta" and isinstance(value, datetime):
                self.options[name] = epoch_of(value)  # JSON: signatures travel in message headers
            elif name in SEND_OPTIONS:
                self.options[name] = value
            else:
                raise ConfigError(f"unknown signature option {name!r}; known: {sorted(SEND_OPTIONS)}, link, "
                                  "link_error")
        return self

    def link(self, callback: Canvas) -> Canvas:
        """Run ``callback`` with this task's result after it succeeds."""
        self.set(link=callback)
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Run ``errback`` with ``(task_id, error)`` after this task fails for good."""
        self.set(link_error=errback)
        return errback

    on_error = link_error

    def clone(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Signature:
        """A copy with ``args`` prepended (unless immutable), kwargs merged and options set; no id."""
        copy = from_dict(self.to_dict(), self.app)
        assert isinstance(copy, Signature)
        copy.options.pop("task_id", None)
        if not self.immutable:
            copy.args = (*args, *copy.args)
        copy.kwargs.update(kwargs or {})
        return copy.set(**options)

    def freeze(self) -> str:
        if "task_id" not in self.options:
            self.options["task_id"] = new_task_id()
        for name in ("link", "link_error"):
            for callback in self.options.get(name, []):
                callback.freeze()
        return self.options["task_id"]

    def result(self, app: Taskq) -> AsyncResult:
        return AsyncResult(self.freeze(), app)

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                    root_id: str | None = None, parent_id: str | None = None, **options: Any) -> AsyncResult:
        """Send this call; extra ``args`` go first (unless immutable), ``options`` override the stored ones."""
        app = self._app()
        merged = {**self.options, **options}
        if not merged.get("link") and not merged.get("link_error"):  # a plain task: the direct path
            task = app.get_task(self.task)
            call_args = self.args if self.immutable else (*args, *self.args)
            return task.apply_async(call_args, {**self.kwargs, **(kwargs or {})}, root_id=root_id,
                                    parent_id=parent_id, **merged)
        sig = self if not options else Signature(self.task, self.args, self.kwargs, merged, self.immutable, app)
        result = Canvas.apply_async(sig, args, kwargs, root_id, parent_id)
        assert isinstance(result, AsyncResult)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run here and now (no broker)."""
        task = self._app().get_task(self.task)
        return task(*(self.args if self.immutable else (*args, *self.args)), **{**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.items() if k not in ("link", "link_error")}
        for name in ("link", "link_error"):
            if self.options.get(name):
                options[name] = [c.to_dict() for c in self.options[name]]
        data: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": self.kwargs}
        if options:
            data["options"] = options
        if self.immutable:
            data["immutable"] = True
        return data


class Chain(Canvas):
    """``chain(a.s(), b.s(), c.s())`` or ``a.s() | b.s() | c.s()``: each result goes to the next task.

    A failure stops the chain; the chain's result (its last task's) then holds that failure.
    """

    def __init__(self, *tasks: Canvas | Iterable[Canvas], app: Taskq | None = None) -> None:
        items = _flatten_arg(tasks)
        if not items:
            raise ConfigError("a chain needs at least one task")
        self.tasks: list[Canvas] = items
        self.app = app or next((t.app for t in items if t.app is not None), None)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    def freeze(self) -> str:
        ids = [t.freeze() for t in self.tasks]
        return ids[-1]

    def result(self, app: Taskq) -> AsyncResult | GroupResult:
        return self.tasks[-1].result(app)

    def to_dict(self) -> dict[str, Any]:
        return {"chain": [t.to_dict() for t in self.tasks]}


class Group(Canvas):
    """``group(a.s(1), a.s(2))``: tasks run in parallel; the result is their list, in call order."""

    def __init__(self, *tasks: Canvas | Iterable[Canvas], id: str | None = None,  # noqa: A002
                 app: Taskq | None = None) -> None:
        self.tasks: list[Canvas] = _flatten_arg(tasks)
        self.id = id
        self.app = app or next((t.app for t in self.tasks if t.app is not None), None)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"

    def __or__(self, other: Canvas) -> Chord:  # type: ignore[override]
        """``group(...) | body`` is a chord, as in Celery."""
        return Chord(self, other) if isinstance(other, Canvas) else NotImplemented

    def freeze(self) -> str:
        if self.id is None:
            self.id = new_task_id()
        for t in self.tasks:
            t.freeze()
        return self.id

    def result(self, app: Taskq) -> GroupResult:
        return GroupResult(self.freeze(), [t.result(app) for t in self.tasks], app)

    def to_dict(self) -> dict[str, Any]:
        return {"group": [t.to_dict() for t in self.tasks], "id": self.id}


class Chord(Canvas):
    """``chord(header, body)``: ``body`` runs once, with the header results in order, after every header
    task finished. A failed header task fails the chord: the body never runs, the chord's result (the
    body's) holds the failure, and the chord's ``link_error`` callbacks run once.

    ``allow_error=True``: a failed header task's place in the results is ``{"error": "Type: message",
    "task_id": id}`` instead, and the body runs once every header task has finished either way.
    """

    def __init__(self, header: Group | Iterable[Canvas], body: Canvas | None = None, id: str | None = None,  # noqa: A002
                 app: Taskq | None = None, link_error: Iterable[Canvas] | Canvas | None = None,
                 allow_error: bool = False) -> None:
        self.header = header if isinstance(header, Group) else Group(*header)
        if not self.header.tasks:
            raise ConfigError("a chord needs at least one header task")
        self.body = body
        self.id = id or self.header.id
        self.app = app or self.header.app or (body.app if body else None)
        self.errbacks: list[Canvas] = _callbacks(link_error, self.app) if link_error is not None else []
        self.allow_error = allow_error

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Canvas) -> Chord:
        """``chord(header)(body)``: Celery's spelling."""
        self.body = body
        self.app = self.app or body.app
        return self

    def link_error(self, errback: Canvas) -> Canvas:
        """Run ``errback`` once with ``(failed_task_id, error)`` when the chord fails."""
        self.errbacks.extend(_callbacks(errback, self.app))
        return errback

    on_error = link_error

    def freeze(self) -> str:
        if self.id is None:
            self.id = new_task_id()
        self.header.freeze()
        for errback in self.errbacks:
            errback.freeze()
        return self.body.freeze() if self.body is not None else self.id

    def result(self, app: Taskq) -> AsyncResult | GroupResult:
        result_id = self.freeze()
        if self.body is None:
            return AsyncResult(result_id, app)
        return self.body.result(app)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"header": [t.to_dict() for t in self.header.tasks],
                                "body": self.body.to_dict() if self.body is not None else None, "id": self.id}
        if self.errbacks:
            data["link_error"] = [e.to_dict() for e in self.errbacks]
        if self.allow_error:
            data["allow_error"] = True
        return {"chord": data}


# Celery's lower-case names
chain = Chain
group = Group
chord = Chord


class GroupResult:
    """Results of a group's tasks, in call order."""

    def __init__(self, id: str, results: list[AsyncResult | GroupResult], app: Taskq) -> None:  # noqa: A002
        self.id = id
        self.results = results
        self.app = app

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} {self.completed_count()}/{len(self.results)}>"

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        """How many tasks of the group succeeded."""
        return sum(r.successful() for r in self.results)

    def get(self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True,
            ) -> list[Any]:
        """Every result in call order; the first failure is raised (``propagate``) or returned in place.
        Refused inside a running task unless ``disable_sync_subtasks=False`` (see :meth:`AsyncResult.get`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(r.get(left, propagate, disable_sync_subtasks))
            except TimeoutError:
                raise TimeoutError(f"group {self.id}: {self.completed_count()} of {len(self.results)} done "
                                   f"after {timeout} s") from None
        return values

    join = get


def signature(data: dict[str, Any] | str | Canvas, app: Taskq | None = None) -> Canvas:
    """A canvas element from its dict or JSON form (``Canvas.to_dict`` / ``to_json``)."""
    if isinstance(data, Canvas):
        return data
    return from_dict(JSON.loads(data.encode()) if isinstance(data, str) else data, app)


def from_dict(data: dict[str, Any], app: Taskq | None = None) -> Canvas:
    """Rebuild an element from :meth:`Canvas.to_dict` data."""
    if "task" in data:
        options = dict(data.get("options") or {})
        callbacks = {k: [from_dict(c, app) for c in options.pop(k)] for k in ("link", "link_error") if k in options}
        sig = Signature(data["task"], data.get("args", ()), data.get("kwargs"), options,
                        bool(data.get("immutable")), app)
        for name, items in callbacks.items():
            sig.options[name] = items
        return sig
    if "chain" in data:
        return Chain(*[from_dict(d, app) for d in data["chain"]], app=app)
    if "group" in data:
        return Group(*[from_dict(d, app) for d in data["group"]], id=data.get("id"), app=app)
    if "chord" in data:
        c = data["chord"]
        body = from_dict(c["body"], app) if c.get("body") is not None else None
        return Chord(Group(*[from_dict(d, app) for d in c["header"]], app=app), body, id=c.get("id"), app=app,
                     link_error=[from_dict(d, app) for d in c.get("link_error", [])],
                     allow_error=bool(c.get("allow_error")))
    raise ConfigError(f"not a canvas element: {sorted(data)} (expected task, chain, group or chord)")


def _chain_items(element: Canvas) -> list[Canvas]:
    return list(element.tasks) if isinstance(element, Chain) else [element]


def _flatten_arg(tasks: tuple[Canvas | Iterable[Canvas], ...]) -> list[Canvas]:
    """``chain(a, b)`` and ``chain([a, b])`` both work."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        return list(tasks[0])
    return [t for t in tasks if isinstance(t, Canvas)]


def _callbacks(value: Canvas | Iterable[Canvas] | None, app: Taskq | None) -> list[Canvas]:
    if value is None:
        return []
    items = [value] if isinstance(value, (Canvas, dict)) else list(value)
    out: list[Canvas] = []
    for item in items:
        if isinstance(item, dict):
            item = from_dict(item, app)
        elif hasattr(item, "s") and not isinstance(item, Canvas):  # a Task given as a callback
            item = item.s()
        if not isinstance(item, Canvas):
            raise ConfigError(f"callback {item!r} is not a signature: use task.s() or task.si()")
        out.append(item)
    return out
