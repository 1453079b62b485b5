"""Kafka broker on confluent-kafka (librdkafka).

Producers are asynchronous: ``produce`` then ``poll(0)``, delivery reported through callbacks,
``flush`` only when a caller must know. ``acks=all`` with idempotence, and Kafka's murmur2 partitioner
so that Java clients agree on placement. Consumers never auto-commit; the worker commits what is done.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    Consumer as _RdConsumer,
    KafkaError,
    KafkaException,
    Message,
    Producer as _RdProducer,
    TopicPartition as _RdTopicPartition,
)
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic, OffsetSpec

from taskq.brokers.base import (
    AssignmentCallback,
    Broker,
    Consumer,
    DeliveryCallback,
    Headers,
    Producer,
    Reader,
    Record,
    TopicInfo,
    TopicPartition,
)
from taskq.config import redact_url
from taskq.errors import BrokerError, ConfigError, DeliveryTimedOut, MessageTooLarge, TopicMissing

MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default message.max.bytes, below the broker's default limit
CLIENT_DEFAULTS: dict[str, Any] = {
    # librdkafka opens a new connection at most every reconnect.backoff.ms / 2 (at least 11 ms). A new
    # client drops its bootstrap connection once it has learned the broker's id and connects again, so its
    # first request waited out the default's 50 ms, and a worker's start paid it for its topic check and
    # again for its group join. Back-off after failures still doubles up to reconnect.backoff.max.ms.
    "reconnect.backoff.ms": 20,
    # partitions an operator adds (kafka-topics --alter) are seen within this long: by a worker's consumer,
    # which otherwise left tasks in them unread, and by producers, which place keys over them; the
    # default refresh is every 5 minutes
    "topic.metadata.refresh.interval.ms": 10000,
    # connect to the brokers as soon as metadata names them: with sparse connections each new client's
    # first request to a broker it had just learned waited ~10 ms (a worker's group join: "no usable
    # brokers"), and a worker starts six (admin, consumer, producer, revocation reader, offsets, forwarder)
    "enable.sparse.connections": False,
}
ADMIN_DEFAULTS: dict[str, Any] = {
    # every admin call raises its failure (BrokerError names the broker); librdkafka's own log lines only
    # repeated it: against a broker that is not running, a "Connect ... failed" line every 12 ms of the wait
    "log_level": 2,
}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",
    "linger.ms": 0,  # a lone task goes at once; librdkafka batches what accumulates while a request is in flight
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 1000000,
    "queue.buffering.max.kbytes": 1048576,
    "message.timeout.ms": 30000,
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 200,  # a rebalance is noticed within 0.2 s (each cooperative round waits for it)
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "queued.min.messages": 20000,
    # once its local queue is full (queued.max.messages.kbytes: large payloads) librdkafka looks again
    # after this long; its 1 s default stalled a drain of 100 KB documents at random (150 vs 700 MB/s)
    "fetch.queue.backoff.ms": 20,
}


CLASSIC_GROUP_ONLY = ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms")


def consumer_config(config: dict[str, Any]) -> dict[str, Any]:
    """The defaults under ``config``; with ``group.protocol=consumer`` (KIP-848, Kafka 4) the broker
    assigns partitions and sets the session, so the classic protocol's defaults are left out."""
    if str(config.get("group.protocol", "classic")).lower() != "consumer":
        return {**CONSUMER_DEFAULTS, **config}
    clash = [k for k in CLASSIC_GROUP_ONLY if k in config]
    if clash:
        raise ConfigError(f"{', '.join(clash)} cannot be set with group.protocol=consumer (the broker decides "
                          "them: group.consumer.* settings); remove them or use group.protocol=classic")
    return {**{k: v for k, v in CONSUMER_DEFAULTS.items() if k not in CLASSIC_GROUP_ONLY}, **config}


def parse_kafka_url(url: str) -> dict[str, Any]:
    """``kafka://host:port[,host:port][?librdkafka.option=value...]`` -> librdkafka config."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"bad Kafka URL {redact_url(url)!r}: expected kafka://host:port[,host:port][?option=value]")
    if "@" in parts.netloc:  # librdkafka would take the user and password for a host name, and log them
        raise ConfigError(f"bad Kafka URL {redact_url(url)!r}: give credentials as options, not before the host: "
                          "kafka://host:port?security.protocol=SASL_SSL&sasl.mechanism=PLAIN&sasl.username=...&"
                          "sasl.password=...")
    config: dict[str, Any] = {"bootstrap.servers": parts.netloc}
    config.update(parse_qsl(parts.query))
    return config


log = logging.getLogger("taskq.brokers.kafka")
#: a subscribed topic that is not there (deleted by an operator, or not created yet): the consumer goes on
GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, getattr(KafkaError, "RECORD_LIST_TOO_LARGE", -1)})


def _replicas(replication: int) -> int:
    """A new topic's replication factor for CreateTopics: 0 (taskq's default) asks for the cluster's own
    ``default.replication.factor`` (-1), which its operator set for its size."""
    return replication if replication > 0 else -1


def _error(err: KafkaError | KafkaException | None) -> BrokerError | None:
    if err is None:
        return None
    if isinstance(err, KafkaException):
        err = err.args[0]
    if isinstance(err, KafkaError) and err.code() in TOO_LARGE:  # refused by the broker: never sendable as is
        return MessageTooLarge(f"Kafka: {err.str()} (the topic's max.message.bytes or the broker's "
                               "message.max.bytes is lower than this message)")
    if isinstance(err, KafkaError) and err.code() == KafkaError._MSG_TIMED_OUT:  # in flight: written, or not
        return DeliveryTimedOut(f"Kafka: {err.str()} (not acknowledged in time; it may still arrive)")
    if isinstance(err, KafkaError) and err.code() in GONE:
        return TopicMissing(f"Kafka: {err.str()} (deleted while in use?)")
    return BrokerError(f"Kafka: {err.str() if isinstance(err, KafkaError) else err}")


class KafkaProducer(Producer):
    """An idempotent, batching producer."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = {**PRODUCER_DEFAULTS, **config}
        self.max_message_bytes = int(config.get("message.max.bytes", MAX_MESSAGE_BYTES))
        self._producer = _RdProducer(config)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        callback = None
        if on_delivery is not None:
            def callback(err: KafkaError | None, msg: Any, _cb: DeliveryCallback = on_delivery) -> None:
                if err is not None:
                    _cb(_error(err), None)
                else:
                    _cb(None, Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                     msg.headers() or [], msg.timestamp()[1]))
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": callback}
        if partition is not None:
            kwargs["partition"] = partition
        looked = False
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:  # local queue full: serve deliveries, then try again
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() in GONE and not looked:  # created again since the last metadata refresh?
                    looked = True
                    with contextlib.suppress(KafkaException):
                        self._producer.list_topics(topic, timeout=5.0)
                    continue
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
                    raise MessageTooLarge(
                        f"message of {size} bytes for {topic} is too large: the limit is "
                        f"{self.max_message_bytes} bytes (message.max.bytes); pass a reference to the payload "
                        "(an object-store key or URL) instead of the payload") from exc
                raise _error(exc) from exc  # type: ignore[misc]

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        produce = self._producer.produce
        while True:
            try:
                produce(topic, value, key)
                return
            except BufferError:  # local queue full: serve deliveries, then try again
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise _error(exc) from exc  # type: ignore[misc]

    def poll(self, timeout: float = 0.0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float | None = None) -> int:
        return self._producer.flush(-1 if timeout is None else timeout)


class KafkaConsumer(Consumer):
    """A group member; records carry headers as a list of (name, bytes)."""

    def __init__(
        self,
        config: dict[str, Any],
        group: str,
        topics: Sequence[str],
        on_assign: AssignmentCallback | None,
        on_revoke: AssignmentCallback | None,
    ) -> None:
        full = consumer_config(config)
        # a set: a consumer that commits only synchronously (they raise instead) never drains it
        self._failed_commits: set[TopicPartition] = set()
        own_on_commit = full.get("on_commit")  # an application's own, called too

        def commit_done(err: KafkaError | None, tps: list[_RdTopicPartition]) -> None:  # served by consume()
            failed = err is not None and err.code() != KafkaError._NO_OFFSET
            self._failed_commits.update((tp.topic, tp.partition) for tp in tps if failed or tp.error is not None)
            if own_on_commit is not None:
                own_on_commit(err, tps)

        self._consumer = _RdConsumer({**full, "group.id": group, "on_commit": commit_done})
        self._assigned: set[TopicPartition] = set()
        self._lock = threading.Lock()
        self._generation = 0  # rebalance callbacks run; ends read across one are dropped
        self._handled = 0  # the generation the last wake started at: behind it, wake the fetchers again
        self._waker: threading.Thread | None = None
        self._unseen_from: Mapping[TopicPartition, int] = {}  # replaced, never changed: read without the lock
        incremental = (str(full.get("group.protocol", "classic")).lower() == "consumer"
                       or "cooperative" in str(full.get("partition.assignment.strategy", "")))
        reset = RESET_TO.get(str(full.get("auto.offset.reset", "")).lower())

        self._gone: set[str] = set()  # topics reported missing, until assigned again
        self._created: set[str] = set()  # topics created after the subscription, not yet reported missing

        def assigned(consumer: _RdConsumer, tps: list[_RdTopicPartition]) -> None:
            got = [(tp.topic, tp.partition) for tp in tps]
            self._gone.difference_update(tp.topic for tp in tps)
            self._assigned.update(got)
            with self._lock:
                self._generation += 1
            if on_assign:
                on_assign(got)
            if incremental and reset is not None and tps:
                start_positions(consumer, tps, reset)

        def revoked(_c: Any, tps: list[_RdTopicPartition]) -> None:
            lost = [(tp.topic, tp.partition) for tp in tps if (tp.topic, tp.partition) in self._assigned]
            if on_revoke and lost:
                on_revoke(lost)
            self._assigned.difference_update(lost)
            with self._lock:
                self._generation += 1
                self._unseen_from = {tp: end for tp, end in self._unseen_from.items() if tp not in lost}

        self._revoked = revoked

        self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        msgs = _take(self._consumer, max_records, timeout)
        if self._handled != self._generation and (self._waker is None or not self._waker.is_alive()):
            # beside the records taken, not before them: the wake's requests take a few milliseconds
            self._handled = self._generation
            self._waker = threading.Thread(target=self._after_rebalance, args=(list(self._assigned), self._generation),
                                           name="taskq-after-rebalance", daemon=True)
            self._waker.start()
        records = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.code() in GONE and not err.fatal():
                    self._topic_gone(msg.topic(), err)
                    continue
                if err.fatal() or not err.retriable():
                    raise BrokerError(f"Kafka consumer: {err.str()}")
                continue
            records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),  # type: ignore[arg-type]
                                  msg.headers() or [], msg.timestamp()[1]))  # type: ignore[arg-type]
        return records

    def unseen_from(self) -> Mapping[TopicPartition, int]:
        return self._unseen_from

    def topics_created(self, topics: Iterable[str]) -> None:
        """One metadata read: under the classic protocol the group is joined again with the subscribed topics
        created since the subscription at once, not at the next metadata refresh (KIP-848: the broker assigns
        them at the member's next heartbeat; no request of the client's brings that forward)."""
        self._created.update(topics)
        with contextlib.suppress(KafkaException):
            self._consumer.list_topics(timeout=WAKE_TIMEOUT)

    def _topic_gone(self, topic: str | None, err: KafkaError) -> None:
        """Warn once that a subscribed topic is missing; the other topics are consumed on."""
        name = topic or "a subscribed topic"
        if name in self._created:  # reported by the metadata read before it was created
            self._created.discard(name)
            return
        if name not in self._gone:
            self._gone.add(name)
            log.warning("%s: %s; its tasks run again once it exists (a worker's start or a client's first send "
                        "creates it)", name, err.str())

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            tps = self._consumer.position([_RdTopicPartition(t, p) for t, p in partitions])
        except KafkaException:  # not known now: the next look may tell
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in tps if tp.error is None and tp.offset >= 0}

    def failed_commits(self) -> list[TopicPartition]:
        failed, self._failed_commits = self._failed_commits, set()
        return list(failed)

    def _after_rebalance(self, partitions: list[TopicPartition], generation: int) -> None:
        """Wake the fetchers, then read the new partitions' ends (both a few milliseconds of requests)."""
        wake_fetchers(self._consumer, partitions)
        with self._lock:
            new = [_RdTopicPartition(t, p) for t, p in partitions if (t, p) not in self._unseen_from]
        ends = partition_ends(self._consumer, new)
        with self._lock:
            if generation == self._generation:
                self._unseen_from = {**self._unseen_from, **ends}

    def commit(self, offsets: dict[TopicPartition, int], asynchronous: bool = False) -> None:
        if not offsets:
            return
        tps = [_RdTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=asynchronous)  # type: ignore[call-overload]
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError._NO_OFFSET:
                raise BrokerError(f"Kafka commit failed: {err.str()}") from exc

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._assigned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause([_RdTopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        self._consumer.resume([_RdTopicPartition(t, p) for t, p in tps])
        wake_fetchers(self._consumer, tps)

    def close(self) -> None:
        """Revoke (so the callback can commit while still a member), then leave the group."""
        try:
            self._revoked(self._consumer, [_RdTopicPartition(t, p) for t, p in self._assigned])
        finally:
            if self._waker is not None:
                self._waker.join()  # its requests are bounded; closing under them would free the handle
            self._consumer.close()


class KafkaBroker(Broker):
    """Kafka reached at ``kafka://host:port[,...]``; ``connect_timeout`` bounds every admin call."""

    def __init__(self, url: str, connect_timeout: float = 10.0, **config: Any) -> None:
        self.url = url
        self.config = {**CLIENT_DEFAULTS, **parse_kafka_url(url), **config}
        self.connect_timeout = connect_timeout
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()
        self._meta_consumer: _RdConsumer | None = None
        self._known: dict[str, int] = {}

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            with self._admin_lock:  # the worker's revocations thread starts while its main thread does
                if self._admin is None:
                    self._admin = AdminClient({**ADMIN_DEFAULTS, **self.config})
        return self._admin

    def _drop_stuck_admin(self, exc: KafkaException) -> None:
        """After a timed-out admin call, start the next one on a new client: librdkafka keeps sending an
        admin client's requests to the broker it last used, so one that stopped answering (a hung process
        or disk) failed every later call while the other brokers served. A new client bootstraps from one
        that answers."""
        if exc.args[0].code() == KafkaError._TIMED_OUT:
            self._admin = None  # an AdminClient has no close(): dropping it ends its connections

    def producer(self, **options: object) -> KafkaProducer:
        return KafkaProducer({**self.config, **options})

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
        **options: object,
    ) -> KafkaConsumer:
        return KafkaConsumer({**self.config, **options}, group, topics, on_assign, on_revoke)

    def list_topics(self) -> dict[str, int]:
        try:
            meta = self.admin.list_topics(timeout=self.connect_timeout)
        except KafkaException as exc:
            self._drop_stuck_admin(exc)
            raise BrokerError(
                f"cannot reach Kafka at {self.config['bootstrap.servers']} within {self.connect_timeout:g} s: "
                f"{exc.args[0]}; is the broker running?"
            ) from exc
        return {name: len(t.partitions) for name, t in meta.topics.items() if not t.error}

    def forget_topic(self, topic: str) -> None:
        self._known.pop(topic, None)

    def listening(self) -> bool:
        """Whether a bootstrap server accepts a TCP connection now: a look before making clients that log
        every failed connect (an admin call logs nothing and raises its failure)."""
        for server in str(self.config.get("bootstrap.servers", "")).split(","):
            host, _, port = server.strip().rpartition("://")[2].rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), min(1.0, self.connect_timeout)).close()
                return True
            except (OSError, ValueError):
                continue
        return False

    def partition_count(self, topic: str) -> int:
        """From the topic checks of this client when they saw the topic (the worker's start-up checks the
        events topic just before it asks); otherwise from the broker."""
        return self._known.get(topic) or super().partition_count(topic)

    def ensure_topics(self, topics: dict[str, int], replication: int = 0) -> set[str]:
        missing = {t: n for t, n in topics.items() if t not in self._known}
        if not missing:
            return set()
        existing = self.list_topics()
        new = [NewTopic(t, n, _replicas(replication)) for t, n in missing.items() if t not in existing]
        if new:
            for topic, future in self.admin.create_topics(new, request_timeout=self.connect_timeout).items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise BrokerError(f"cannot create topic {topic!r}: {exc.args[0].str()}") from exc
            # the counts come from the metadata that showed the topics ready: another list_topics()
            # may ask a broker that does not know them yet (KeyError with several brokers)
            existing = {**existing, **self._wait_for_topics([t.topic for t in new])}
        self._known.update({t: existing[t] for t in missing})
        return {t.topic for t in new}

    def _wait_for_topics(self, names: list[str]) -> dict[str, int]:
        """Until every new topic's partitions have leaders (producing before that fails); their counts."""
        deadline = time.monotonic() + self.connect_timeout
        while time.monotonic() < deadline:
            topics = self.admin.list_topics(timeout=self.connect_timeout).topics
            if all(n in topics and not topics[n].error and topics[n].partitions
                   and all(p.leader >= 0 for p in topics[n].partitions.values()) for n in names):
                return {n: len(topics[n].partitions) for n in names}
            time.sleep(0.05)
        raise BrokerError(f"topics {names} were created but never appeared in metadata")

    def _meta(self) -> _RdConsumer:
        if self._meta_consumer is None:
            self._meta_consumer = _RdConsumer({**self.config, "group.id": "taskq-admin", "enable.auto.commit": False})
        return self._meta_consumer

    def _partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` (0 when it does not exist) from the metadata of that topic alone: asking
        for every topic's, per topic, made ``taskq topics`` grow with the square of the topic count. Asked
        through the metadata consumer, which never has the broker auto-create a topic."""
        try:
            meta = self._meta().list_topics(topic=topic, timeout=self.connect_timeout)
        except KafkaException as exc:
            raise BrokerError(f"cannot read the metadata of {topic} within {self.connect_timeout:g} s: "
                              f"{exc.args[0]}; is the broker running?") from exc
        found = meta.topics.get(topic)
        return len(found.partitions) if found is not None and not found.error else 0

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        parts = self._partition_count(topic)
        if not parts:
            return {}
        try:
            return self._listed_offsets(topic, parts)
        except KafkaException:  # e.g. a new topic's leader not known yet: partition by partition, retrying
            pass
        meta = self._meta()
        marks: dict[int, tuple[int, int]] = {}
        for p in range(parts):
            deadline = time.monotonic() + self.connect_timeout
            while True:
                try:
                    low, high = meta.get_watermark_offsets(_RdTopicPartition(topic, p), timeout=self.connect_timeout)
                    marks[p] = (low, high)
                    break
                except KafkaException as exc:  # a new topic's leader may not be known yet
                    if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION \
                            or time.monotonic() > deadline:
                        raise BrokerError(f"cannot read offsets of {topic}[{p}]: {exc.args[0].str()}") from exc
                    time.sleep(0.1)
        return marks

    def _listed_offsets(self, topic: str, parts: int) -> dict[int, tuple[int, int]]:
        """(low, high) of every partition in two batched ListOffsets requests instead of a round trip per
        partition and end."""
        ends = [self.admin.list_offsets({_RdTopicPartition(topic, p): spec() for p in range(parts)},
                                        request_timeout=self.connect_timeout)
                for spec in (OffsetSpec.earliest, OffsetSpec.latest)]
        low, high = ({tp.partition: future.result().offset for tp, future in end.items()} for end in ends)
        return {p: (low[p], high[p]) for p in range(parts)}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        parts = self._partition_count(topic)
        request = ConsumerGroupTopicPartitions(group, [_RdTopicPartition(topic, p) for p in range(parts)])
        try:
            future = self.admin.list_consumer_group_offsets([request], request_timeout=self.connect_timeout)[group]
            tps = future.result().topic_partitions
        except KafkaException as exc:
            raise BrokerError(f"cannot read committed offsets of {group} on {topic}: {exc.args[0].str()}") from exc
        return {tp.partition: tp.offset for tp in tps if tp.offset != OFFSET_INVALID and tp.offset >= 0}

    def offsets_for_time(self, topic: str, ts: float) -> dict[int, int]:
        marks = self.watermarks(topic)
        query = [_RdTopicPartition(topic, p, int(ts * 1000)) for p in marks]
        try:
            found = self._meta().offsets_for_times(query, timeout=self.connect_timeout) if query else []
        except KafkaException as exc:
            raise BrokerError(f"cannot look up offsets of {topic} by time: {exc.args[0].str()}") from exc
        # no record at or after ts: the end (-1 from the broker)
        return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

    def reader(self, topic: str, start: dict[int, int]) -> KafkaReader:
        return KafkaReader(self.config, topic, start)

    def group_topics(self, group: str) -> list[str]:
        try:
            future = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                            request_timeout=self.connect_timeout)[group]
            tps = future.result().topic_partitions
        except KafkaException as exc:
            raise BrokerError(f"cannot read committed offsets of {group}: {exc.args[0].str()}") from exc
        topics = {tp.topic for tp in tps or () if tp.offset >= 0}
        try:  # and what live members are assigned (Kafka's tool shows those partitions too)
            description = self.admin.describe_consumer_groups([group], request_timeout=self.connect_timeout)[group]
            for member in description.result().members:
                topics.update(tp.topic for tp in member.assignment.topic_partitions)
        except KafkaException as exc:
            raise BrokerError(f"cannot describe consumer group {group}: {exc.args[0].str()}") from exc
        return sorted(topics)

    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        tps = [_RdTopicPartition(topic, p, o) for p, o in before.items() if o > 0]
        if not tps:
            return
        for tp, future in self.admin.delete_records(tps, request_timeout=self.connect_timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                raise BrokerError(f"cannot delete records of {topic}[{tp.partition}]: {exc.args[0]}") from exc

    def ensure_compacted_topic(self, topic: str, retention_s: float, replication: int = 0) -> None:
        if topic not in self._known and (count := self.list_topics().get(topic)):
            self._known[topic] = count
        if topic in self._known:
            return
        config = {"cleanup.policy": "compact,delete", "retention.ms": str(int(retention_s * 1000)),
                  "segment.ms": str(min(int(retention_s * 1000), 3_600_000))}
        future = self.admin.create_topics([NewTopic(topic, 1, _replicas(replication), config=config)],
                                          request_timeout=self.connect_timeout)[topic]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {topic!r}: {exc.args[0].str()}") from exc
        self._known.update(self._wait_for_topics([topic]))

    def describe_topics(self, topics: Sequence[str]) -> dict[str, TopicInfo]:
        meta = self.admin.list_topics(timeout=self.connect_timeout).topics
        names = [t for t in topics if t in meta and not meta[t].error]
        if not names:
            return {}
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in names]
        try:
            futures = self.admin.describe_configs(resources, request_timeout=self.connect_timeout)
            configs = {res.name: future.result() for res, future in futures.items()}
        except KafkaException as exc:
            raise BrokerError(f"cannot describe topics {names}: {exc.args[0].str()}") from exc
        info = {}
        for name in names:
            parts = meta[name].partitions
            retention = int(configs[name]["retention.ms"].value)
            info[name] = TopicInfo(len(parts), max((len(p.replicas) for p in parts.values()), default=0),
                                   None if retention < 0 else retention, configs[name]["cleanup.policy"].value)
        return info

    def create_partitions(self, topic: str, total: int) -> None:
        futures = self.admin.create_partitions([NewPartitions(topic, total)], request_timeout=self.connect_timeout)
        try:
            futures[topic].result()
        except KafkaException as exc:
            raise BrokerError(f"cannot grow {topic} to {total} partitions: {exc.args[0].str()}") from exc
        self._known.pop(topic, None)
        deadline = time.monotonic() + self.connect_timeout
        while self._wait_for_topics([topic])[topic] < total:
            if time.monotonic() > deadline:
                raise BrokerError(f"{topic} was grown to {total} partitions but metadata does not show them yet")
            time.sleep(0.1)

    def group_members(self, group: str) -> int:
        try:
            described = self.admin.describe_consumer_groups([group], request_timeout=self.connect_timeout)[group].result()
        except KafkaException as exc:
            raise BrokerError(f"cannot describe consumer group {group}: {exc.args[0].str()}") from exc
        return len(described.members)

    def close(self) -> None:
        self._admin = None  # an AdminClient has no close(): dropping it ends its connections
        if self._meta_consumer is not None:
            self._meta_consumer.close()
            self._meta_consumer = None


def _take(consumer: _RdConsumer, max_records: int, timeout: float) -> list[Message]:
    """Up to ``max_records`` messages, without waiting for a full batch.

    librdkafka's batch consume waits for a full batch or the timeout; poll returns on the first
    message, so: take what is there, else wait for one message, then take what came with it.
    """
    msgs = consumer.consume(max_records, 0)
    if not msgs:
        first = consumer.poll(timeout)
        if first is None:
            return []
        msgs = [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
    return list(msgs)


WAKE_TIMEOUT = 0.5  # s: bound on the requests that wake the fetchers after a rebalance or a resume
RESET_TO = {"earliest": OFFSET_BEGINNING, "smallest": OFFSET_BEGINNING, "beginning": OFFSET_BEGINNING,
            "latest": OFFSET_END, "largest": OFFSET_END, "end": OFFSET_END}  # auto.offset.reset -> where


def partition_ends(consumer: _RdConsumer, tps: list[_RdTopicPartition]) -> dict[TopicPartition, int]:
    """The end offsets of newly assigned partitions, in one request per broker (ListOffsets, latest).

    A member that had a partition before lost it before this one got it, so it was given only records
    below the end read now: later records need no check for a result stored by an earlier owner. Best
    effort: a partition whose end is not read is checked whole.
    """
    if not tps:
        return {}
    try:
        ends = consumer.offsets_for_times([_RdTopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in tps],
                                          timeout=WAKE_TIMEOUT)
    except KafkaException:
        return {}
    return {(tp.topic, tp.partition): tp.offset for tp in ends if tp.error is None and tp.offset >= 0}


def start_positions(consumer: _RdConsumer, tps: list[_RdTopicPartition], reset: int) -> None:
    """Assign newly given partitions at their committed offsets, or where ``auto.offset.reset`` points.

    Left to itself, librdkafka waits a fixed 100 ms before it looks up the reset offset of a partition
    with nothing committed (every partition of a new group), so a first worker started 0.1 s late. This
    reads the committed offsets in one request and assigns explicit positions (what librdkafka would have
    used). Best effort: on an error, librdkafka assigns them as usual once the callback returns.
    """
    try:
        committed = consumer.committed(tps, timeout=WAKE_TIMEOUT)
    except KafkaException:
        return
    for tp in committed:
        if tp.error is not None:
            return
        if tp.offset < 0:
            tp.offset = reset
    with contextlib.suppress(KafkaException):
        consumer.incremental_assign(committed)


def wake_fetchers(consumer: _RdConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Make the threads that fetch ``partitions`` look at them again now.

    librdkafka pauses every assigned partition while a rebalance callback is pending (also under
    cooperative-sticky and KIP-848) and resumes them afterwards, as ``resume()`` does, without waking the
    thread of each partition's leader; a thread with nothing else to fetch then sleeps up to 1 s before it
    fetches again, and the worker runs nothing meanwhile. A request to each leader wakes its thread:
    the metadata request names the leaders (and gives the queued resumes time to apply), then one
    watermark query per leader. Topics are looked at only until every broker is woken (one metadata
    request per topic made a restart with 200 task topics wait seconds). Best effort: on an error the
    fetch starts within the second anyway.
    """
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    woken: set[int] = set()
    try:
        for topic, numbers in by_topic.items():
            cluster = consumer.list_topics(topic, timeout=WAKE_TIMEOUT)
            meta = cluster.topics.get(topic)
            if meta is None:
                continue
            for number in numbers:
                leader = meta.partitions[number].leader if number in meta.partitions else -1
                if leader >= 0 and leader not in woken:
                    woken.add(leader)
                    consumer.get_watermark_offsets(_RdTopicPartition(topic, number), timeout=WAKE_TIMEOUT,
                                                   cached=False)
            if woken >= set(cluster.brokers):
                return
    except KafkaException:
        pass


class KafkaReader(Reader):
    """An assigned (not subscribed) consumer: no group membership, no commits."""

    def __init__(self, config: dict[str, Any], topic: str, start: dict[int, int]) -> None:
        self._consumer = _RdConsumer({**config, "group.id": f"taskq-reader-{time.time_ns()}",
                                      "enable.auto.commit": False, "enable.auto.offset.store": False,
                                      "auto.offset.reset": "earliest", "enable.partition.eof": False})
        self._consumer.assign([_RdTopicPartition(topic, p, o) for p, o in start.items()])

    def read(self, max_records: int, timeout: float) -> list[Record]:
        msgs = _take(self._consumer, max_records, timeout)
        records = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BrokerError(f"Kafka reader: {err.str()}")
                continue
            records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),  # type: ignore[arg-type]
                                  msg.headers() or [], msg.timestamp()[1]))  # type: ignore[arg-type]
        return records

    def close(self) -> None:
        self._consumer.close()
