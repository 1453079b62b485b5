"""taskq: a Celery-style task queue on Apache Kafka, with results in Redis."""

from taskq.app import Taskq
from taskq.canvas import Signature
from taskq.errors import (
    BackendError,
    BrokerError,
    BudgetExceeded,
    ConfigError,
    DeliveryTimedOut,
    MessageRejected,
    MessageTooLarge,
    NotRegistered,
    RateLimited,
    Reject,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskFailed,
    TaskqError,
    TimeLimitExceeded,
    TimeoutError,
    WorkerLostError,
)
from taskq.result import AsyncResult
from taskq.results.base import StreamRestart
from taskq.task import Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from taskq.worker import Worker


def __getattr__(name: str) -> object:
    """``Worker`` on first use: a script that only sends tasks does not import the worker."""
    if name == "Worker":
        from taskq.worker import Worker

        return Worker
    raise AttributeError(f"module 'taskq' has no attribute {name!r}")


__all__ = [
    "AsyncResult",
    "BackendError",
    "BrokerError",
    "BudgetExceeded",
    "ConfigError",
    "DeliveryTimedOut",
    "MessageRejected",
    "MessageTooLarge",
    "NotRegistered",
    "RateLimited",
    "Reject",
    "Retry",
    "SerializationError",
    "Signature",
    "StreamRestart",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskFailed",
    "Taskq",
    "TaskqError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
    "Worker",
]
__version__ = "0.1.0"
