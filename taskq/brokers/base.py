"""The broker contract: what the worker and the producer side need from Kafka.

Both :mod:`taskq.brokers.kafka` and :mod:`taskq.brokers.local` implement it and pass the same
contract tests (``tests/test_broker_contract.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from taskq.errors import BrokerError

Headers = list[tuple[str, bytes]]
TopicPartition = tuple[str, int]
DeliveryCallback = Callable[["Exception | None", "Record | None"], None]
AssignmentCallback = Callable[[list[TopicPartition]], None]


class Record(NamedTuple):
    """One message as read from (or acknowledged by) a topic partition.

    A named tuple: the consumer builds one per message, and a tuple is the cheapest immutable record.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for k, v in reversed(self.headers):
            if k == name:
                return v
        return None


class TopicInfo(NamedTuple):
    """What ``taskq topics`` shows of a topic."""

    partitions: int
    replication: int
    retention_ms: int | None  # None: kept forever (retention.ms=-1)
    cleanup_policy: str = "delete"


class Producer(ABC):
    """Asynchronous producer: ``produce`` queues, delivery is reported through ``on_delivery``."""

    @abstractmethod
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message; raises :class:`~taskq.errors.BrokerError` at once if it can never be sent."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue a message nobody waits for (no headers, no delivery callback): the cheapest produce.

        The producer still retries it until its message timeout; for events, not for task messages.
        """
        self.produce(topic, key, value)

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""

    @abstractmethod
    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued message is acknowledged; returns how many are still queued."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush(10.0)


class Consumer(ABC):
    """A member of a consumer group. Offsets are committed explicitly, never automatically."""

    @abstractmethod
    def consume(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records from assigned, unpaused partitions, waiting at most ``timeout`` s."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int], asynchronous: bool = False) -> None:
        """Commit the next offset to read for each partition; ``asynchronous`` may return before it lands
        (:meth:`failed_commits` then reports it if it did not)."""

    def failed_commits(self) -> list[TopicPartition]:
        """Partitions whose asynchronous commits failed since the last call (e.g. refused during a
        rebalance): their points are to be committed again."""
        return []

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """Partitions currently owned by this member."""

    def topics_created(self, topics: Iterable[str]) -> None:
        """Subscribed topics may have been created after the subscription (``topics`` by this client): take
        them up now."""

    def unseen_from(self) -> Mapping[TopicPartition, int]:
        """Per assigned partition, an offset from which no other member of the group can have been given
        its records: the partition's end when it was assigned here. Partitions left out may have been."""
        return {}

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to read of each partition, past what :meth:`consume` returned and past offsets
        that hold no record (Kafka's transaction markers); partitions left out are not known."""
        return {}

    @abstractmethod
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning records from these partitions until resumed."""

    @abstractmethod
    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Return records from these partitions again."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (revoking partitions through the callback first)."""


class Reader(ABC):
    """Reads one topic from given offsets, outside any consumer group (tails, inspection)."""

    @abstractmethod
    def read(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` next records, waiting at most ``timeout`` s for the first."""

    def close(self) -> None:
        """Release the connection."""


class Broker(ABC):
    """Factory for producers and consumers plus the admin calls the worker and the monitor need."""

    url: str

    @abstractmethod
    def producer(self, **options: object) -> Producer:
        """A new producer."""

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
        **options: object,
    ) -> Consumer:
        """A new consumer in ``group`` subscribed to ``topics``.

        ``on_revoke`` runs before partitions are taken away (commit finished work there);
        ``on_assign`` after new ones are given.
        """

    @abstractmethod
    def ensure_topics(self, topics: dict[str, int], replication: int = 0) -> set[str]:
        """Create the topics that are missing, with the given partition counts (``replication`` 0: the
        cluster's default); returns those it found missing."""

    def forget_topic(self, topic: str) -> None:
        """Drop what this client remembers of ``topic``: the next :meth:`ensure_topics` asks the broker."""

    @abstractmethod
    def list_topics(self) -> dict[str, int]:
        """Topic name -> partition count."""

    def listening(self) -> bool:
        """Whether the broker accepts connections now, looked at cheaply (a local broker always does)."""
        return True

    def partition_count(self, topic: str) -> int:
        """The topic's partition count, 0 if it does not exist (a broker may answer from what it knows)."""
        return self.list_topics().get(topic, 0)

    @abstractmethod
    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """Partition -> (low, high) offsets."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Partition -> committed offset of ``group`` (partitions without a commit are left out)."""

    @abstractmethod
    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        """Delete records of ``topic`` below ``before[partition]`` (offsets are never reused)."""

    def offsets_for_time(self, topic: str, ts: float) -> dict[int, int]:
        """Partition -> the first offset whose timestamp is at or after ``ts`` (epoch s), else the end."""
        raise BrokerError(f"{type(self).__name__} cannot look up offsets by time")

    def reader(self, topic: str, start: dict[int, int]) -> Reader:
        """A :class:`Reader` of ``topic`` from ``start[partition]`` (partitions left out are not read)."""
        raise BrokerError(f"{type(self).__name__} cannot read outside a consumer group")

    def group_topics(self, group: str) -> list[str]:
        """Topics on which ``group`` has committed offsets (Kafka: or its live members are assigned)."""
        return sorted(t for t in self.list_topics() if self.committed(group, t))

    # -- topic management (``taskq topics``); brokers without it say so --------------------------------

    def ensure_compacted_topic(self, topic: str, retention_s: float, replication: int = 0) -> None:
        """Create ``topic`` (one partition) if missing, keeping the latest record per key for ``retention_s``."""
        self.ensure_topics({topic: 1}, replication)

    def describe_topics(self, topics: Sequence[str]) -> dict[str, TopicInfo]:
        """Partitions, replication and retention of existing ``topics``."""
        counts = self.list_topics()
        return {t: TopicInfo(counts[t], 1, None) for t in topics if t in counts}

    def create_partitions(self, topic: str, total: int) -> None:
        """Grow ``topic`` to ``total`` partitions (Kafka can add partitions, never remove them)."""
        raise BrokerError(f"the {type(self).__name__} cannot add partitions; use a Kafka broker")

    def group_members(self, group: str) -> int:
        """How many members ``group`` has now."""
        raise BrokerError(f"the {type(self).__name__} cannot describe consumer groups; use a Kafka broker")

    def lag(self, group: str, topic: str, marks: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
        """Partition -> messages not yet committed by ``group``; ``marks``: the topic's watermarks when the
        caller has read them already."""
        committed = self.committed(group, topic)
        marks = self.watermarks(topic) if marks is None else marks
        return {p: hi - committed.get(p, lo) for p, (lo, hi) in marks.items()}

    def close(self) -> None:
        """Release shared resources."""
