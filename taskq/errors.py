"""One error hierarchy; every message says what to do next."""

from __future__ import annotations

import builtins
import math


class TaskqError(Exception):
    """Base of every taskq error."""


class ConfigError(TaskqError, ValueError):
    """A setting, URL or option is wrong."""


class BrokerError(TaskqError):
    """The broker refused, lost or could not be reached for a message."""


class MessageTooLarge(BrokerError):
    """The broker refuses a message over its size limit; no retry can send it as it is."""


class DeliveryTimedOut(BrokerError):
    """A message not acknowledged within ``send_timeout``: the broker may have written it all the same (it
    then arrives and runs once the broker serves it), or not. Check ``AsyncResult(id)`` before sending again."""


class TopicMissing(BrokerError):
    """The topic does not exist (deleted while in use): sending again needs it created again."""


class BackendError(TaskqError):
    """The result backend could not be reached or refused a write."""


class BackendRefused(BackendError):
    """The result backend answered but refused the command: retrying the same command cannot help."""


class SerializationError(TaskqError, TypeError):
    """Arguments or a result could not be (de)serialized with the chosen serializer."""


class NotRegistered(TaskqError, KeyError):
    """No task of that name is registered with the app."""

    def __str__(self) -> str:
        return f"task {self.args[0]!r} is not registered; import the module that defines it in the app's module"


class TimeoutError(TaskqError, builtins.TimeoutError):  # noqa: A001 - mirrors celery.exceptions.TimeoutError
    """``AsyncResult.get`` waited longer than its timeout."""


class TaskRevoked(TaskqError):
    """Raised by ``get()`` for a task that was revoked: it did not run (or was terminated)."""


class TaskFailed(TaskqError):
    """Raised by ``get()`` when the task's exception type cannot be rebuilt locally."""


class Retry(TaskqError):
    """Raised by ``Task.retry`` to ask the worker to run the task again later."""

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None) -> None:
        if countdown is not None and (isinstance(countdown, bool) or not isinstance(countdown, (int, float))
                                      or not math.isfinite(countdown)):  # inf: a retry never due
            raise ConfigError(f"retry countdown must be a finite number of seconds, not {countdown!r}")
        super().__init__(exc, countdown)
        self.exc = exc
        self.countdown = countdown


class MessageRejected(TaskqError):
    """Raised by ``get()`` for a message the worker could not run (unknown task, undecodable body, content
    type not accepted): it is in the task's dead-letter topic (``taskq dlq show``); fix the sender or
    register the task, then replay it."""


class Reject(TaskqError):
    """Raise inside a task to send its message to the dead-letter topic without retrying."""


class SoftTimeLimitExceeded(TaskqError):
    """Raised inside a task when its ``soft_time_limit`` passes: clean up and return or raise."""


class TimeLimitExceeded(TaskqError):
    """A task ran past its hard ``time_limit`` and was ended by the worker."""


class OutageTooLong(TaskqError):
    """The broker or the result backend stayed unreachable for ``outage_timeout`` seconds: the worker stops.
    Work not made durable stays uncommitted and is redelivered; start the worker again once it is back."""


class WorkerLostError(TaskqError):
    """The process running a task died before reporting an outcome."""


class BudgetExceeded(TaskqError):
    """A user's daily token or cost budget is spent: further calls for that user fail until the next
    UTC day (or raise the budget)."""


class RateLimited(TaskqError):
    """A user is blocked for a while after exceeding a request rate; retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

class Replace(TaskqError):
    """Raised by ``Task.replace(workflow)``: the task ends by sending ``workflow`` in its place, whose
    result becomes this task's result (see :mod:`taskq.flow`)."""

    def __init__(self, element: dict[str, object]) -> None:
        super().__init__(element)
        self.element = element
