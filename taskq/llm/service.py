"""``LLM``: what LLM tasks of one app share in a process: the SDK client, limits, budgets, accounting."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import TYPE_CHECKING, Any

from taskq.llm.client import LLMClients, LLMConfig
from taskq.llm.guard import Guard, Limits
from taskq.llm.writes import LoopWrites

if TYPE_CHECKING:
    from taskq.app import Taskq
    from taskq.task import Task


def default_user(task: Task) -> str | None:
    """The default of ``task``'s key argument (``user_id="anonymous"``), or None."""
    parameter = inspect.signature(task.fn).parameters.get(task.key) if isinstance(task.key, str) else None
    if parameter is None or not isinstance(parameter.default, str):
        return None
    return parameter.default


class LLM:
    """One per app and process. ``install(task)`` wires it in: a startup check (provider configured) for
    workers consuming the task, and send checks (budgets, blocked users) on ``task.delay()``.

    Configuration comes from the environment on first use unless given: :class:`LLMConfig` (provider)
    and :class:`Limits` (budgets, RPM/TPM); a caller that only sends tasks needs neither API key nor URL.
    """

    def __init__(self, app: Taskq, config: LLMConfig | None = None, limits: Limits | None = None) -> None:
        self.app = app
        self.clients = LLMClients(config)
        self._limits = limits
        self._guard: Guard | None = None
        self._writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWrites] = weakref.WeakKeyDictionary()
        self._default_users: dict[str, str | None] = {}  # per installed task, read once from its signature

    @property
    def limits(self) -> Limits:
        if self._limits is None:
            self._limits = Limits.from_env()
        return self._limits

    @property
    def guard(self) -> Guard:
        if self._guard is None:
            self._guard = Guard(self.app, self.limits)
        return self._guard

    def check(self) -> None:
        """Startup check: raise naming the variables when no provider is configured."""
        self.clients.check()

    def send_check(self, task: Task, key: str | None) -> None:
        """Budgets and blocks of the user the call will run for: the key, else the key argument's default
        (a call without ``user_id`` runs, and is accounted, as ``"anonymous"``)."""
        self.guard.send_check(task, key if key is not None else self._default_users.get(task.name))

    def install(self, *tasks: Task) -> None:
        self.app.add_startup_check(self.check, [t.name for t in tasks])
        for task in tasks:
            self._default_users[task.name] = default_user(task)
            task.add_send_check(self.send_check)

    def client(self) -> Any:
        return self.clients.get()

    def writes(self) -> LoopWrites:
        """The running event loop's batched partial-result and usage writes (one per loop)."""
        loop = asyncio.get_running_loop()
        writes = self._writes.get(loop)
        if writes is None:
            guard = self.guard
            writes = self._writes[loop] = LoopWrites(loop, self.app.backend, lambda: guard.usage)
        return writes
