"""Signatures: a task call packed as data, to send now or later (chains, groups, chords build on it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.result import AsyncResult


@dataclass
class Signature:
    """``task.s(*args, **kwargs)``: which task, with which arguments and send options."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    app: Taskq | None = field(default=None, repr=False, compare=False)

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send with extra leading args / kwargs / options merged in."""
        if self.app is None:
            raise RuntimeError("this signature has no app; build it with task.s()")
        task = self.app.get_task(self.task)
        return task.apply_async((*args, *self.args), {**self.kwargs, **(kwargs or {})},
                                **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def set(self, **options: Any) -> Signature:
        self.options.update(options)
        return self
