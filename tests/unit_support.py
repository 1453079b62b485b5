"""Helpers shared by the unit tests: records built in memory, an app on a throwaway embedded broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import Taskq
from taskq.brokers.base import Record
from taskq.message import TaskMessage
from taskq.serialization import Registry

JSON_ONLY = Registry(("json",))


class CustomError(Exception):
    """Module-level, so a result naming ``tests.unit_support.CustomError`` can be rebuilt."""


def as_record(value: bytes | None, headers: list[tuple[str, bytes]], topic: str = "t", partition: int = 0,
              offset: int = 0, key: bytes | None = b"k") -> Record:
    return Record(topic, partition, offset, key, value, headers)


def encoded(message: TaskMessage, registry: Registry = JSON_ONLY, serializer: str = "json", **kw: object) -> Record:
    value, headers = message.encode(registry, serializer)
    return as_record(value, headers, key=message.key, **kw)  # type: ignore[arg-type]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Taskq]:
    a = Taskq("units", local_path=str(tmp_path / "q.db"))
    yield a
    a.close()
