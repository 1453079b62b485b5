"""The task envelope: routing data in Kafka headers, ``[args, kwargs]`` in the value.

Keeping id, task name and attempt count in headers lets the worker route, dead-letter and replay a
message without decoding its body.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from taskq.brokers.base import Headers, Record
from taskq.errors import SerializationError
from taskq.serialization import Registry

H_ID = "id"
H_TASK = "task"
H_CONTENT_TYPE = "content-type"
H_ATTEMPTS = "attempts"
H_FIRST_FAILURE = "first-failure"
H_ETA = "eta"
H_ORIGIN = "origin-topic"
H_ROOT_ID = "root_id"  # the first task of a workflow (a chain's first link); absent = the task's own id
H_PARENT_ID = "parent_id"  # the task that sent this one, if any
H_CANVAS = "canvas"  # JSON: what follows this task (rest of a chain, chord membership, callbacks)
H_USER_PREFIX = "x-"


class MalformedMessage(SerializationError):
    """A record that is not a taskq task message (goes to the dead-letter topic)."""


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task invocation as it travels through Kafka."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: bytes | None = None
    attempts: int = 0
    first_failure: float | None = None
    eta: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    root_id: str | None = None  # None = this task is its own root
    parent_id: str | None = None
    canvas: str | None = None  # the H_CANVAS header (JSON text, read by taskq.canvas), kept on retries

    @property
    def root(self) -> str:
        """The root task id (the own id unless sent within a workflow)."""
        return self.root_id or self.id

    def encode(self, registry: Registry, serializer: str = "json") -> tuple[bytes, Headers]:
        """(value, headers) ready for ``Producer.produce``."""
        content_type, value = registry.dumps([self.args, self.kwargs], serializer)
        headers: Headers = [(H_ID, self.id.encode()), (H_TASK, self.task.encode()),
                            (H_CONTENT_TYPE, content_type.encode())]
        if self.root_id is not None and self.root_id != self.id:
            headers.append((H_ROOT_ID, self.root_id.encode()))
        if self.parent_id is not None:
            headers.append((H_PARENT_ID, self.parent_id.encode()))
        if self.canvas is not None:
            headers.append((H_CANVAS, self.canvas.encode()))
        if self.attempts:
            headers.append((H_ATTEMPTS, str(self.attempts).encode()))
        if self.first_failure is not None:
            headers.append((H_FIRST_FAILURE, repr(self.first_failure).encode()))
        if self.eta is not None:
            headers.append((H_ETA, repr(self.eta).encode()))
        headers.extend((H_USER_PREFIX + k, v.encode()) for k, v in self.headers.items())
        return value, headers

    @classmethod
    def decode(cls, record: Record, registry: Registry) -> TaskMessage:
        """Parse a record; raises :class:`MalformedMessage` saying what is wrong."""
        meta: dict[str, bytes] = {}
        user: dict[str, str] = {}
        try:
            for name, raw in record.headers:
                if name.startswith(H_USER_PREFIX):
                    user[name[len(H_USER_PREFIX):]] = raw.decode()
                else:
                    meta[name] = raw
            task_id = meta[H_ID].decode()
            task = meta[H_TASK].decode()
            content_type = meta.get(H_CONTENT_TYPE, b"application/json").decode()
            attempts = int(meta.get(H_ATTEMPTS, b"0"))
            first = float(meta[H_FIRST_FAILURE]) if H_FIRST_FAILURE in meta else None
            eta = float(meta[H_ETA]) if H_ETA in meta else None
            root_id = meta[H_ROOT_ID].decode() if H_ROOT_ID in meta else None
            parent_id = meta[H_PARENT_ID].decode() if H_PARENT_ID in meta else None
            canvas = meta[H_CANVAS].decode() if H_CANVAS in meta else None
        except KeyError as exc:
            raise MalformedMessage(f"missing header {exc.args[0]!r}") from None
        except (AttributeError, TypeError):  # None.decode(), int(None): a header sent without a value
            unset = ", ".join(repr(name) for name, raw in record.headers if raw is None)
            raise MalformedMessage(f"bad header: no value in {unset}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"bad header: {exc}") from None
        if not task_id:
            raise MalformedMessage("header 'id' is empty")
        if attempts < 0:  # would grant a task more retries than its max_retries
            raise MalformedMessage(f"header 'attempts' is negative: {attempts}")
        if record.value is None:
            raise MalformedMessage("empty message value")
        body = registry.loads(record.value, content_type)
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], list)
                and isinstance(body[1], dict)):
            raise MalformedMessage("value must be [args, kwargs]")
        return cls(task_id, task, body[0], body[1], record.key, attempts, first, eta, user, root_id, parent_id,
                   canvas)

    def retried(self, now: float, eta: float) -> TaskMessage:
        """This message as sent again for its next attempt."""
        return replace(self, attempts=self.attempts + 1, first_failure=self.first_failure or now, eta=eta)
