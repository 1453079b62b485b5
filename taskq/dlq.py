"""Dead letters: list, show, replay and purge the ``<topic>.dlq`` topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator

from taskq import flow
from taskq.app import Taskq
from taskq.brokers.base import Headers, Record
from taskq.deadletter import DeadLetter
from taskq.errors import BrokerError, TaskqError
from taskq.message import H_CANVAS
from taskq.results.base import FAILURE

__all__ = ["DeadLetter", "dead_letters", "purge", "read_topic", "replay"]


def read_topic(app: Taskq, topic: str, timeout: float = 30.0) -> Iterator[Record]:
    """Every record now in ``topic``, from the start (a throwaway group, nothing committed)."""
    if topic not in app.broker.list_topics():
        return
    ends = {p: hi for p, (lo, hi) in app.broker.watermarks(topic).items() if hi > lo}
    if not ends:
        return
    consumer = app.broker.consumer(f"taskq-reader-{uuid.uuid4().hex[:12]}", [topic])
    try:
        seen: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while any(seen.get(p, -1) + 1 < hi for p, hi in ends.items()) and time.monotonic() < deadline:
            for record in consumer.consume(1000, 0.5):
                if record.offset < ends.get(record.partition, 0):
                    seen[record.partition] = record.offset
                    yield record
    finally:
        consumer.close()


def dead_letters(app: Taskq, task: str) -> list[DeadLetter]:
    """Dead letters of ``task`` (a task name or topic), oldest first."""
    return [DeadLetter(r) for r in read_topic(app, app.dlq_topic(_topic(app, task)))]


def replay(app: Taskq, letters: Iterable[DeadLetter], dry_run: bool = False) -> list[DeadLetter]:
    """Send the letters back to their task topics with their original id and key, each id once (a task that
    died again after a replay has a letter per death: the newest is sent, or the task would run once per letter);
    returns those sent.

    The stored FAILURE result is removed first, so the worker does not skip the task as finished, and
    so are the failures it stored for the rest of its chain, which runs again after it. Letters stay
    after a replay: one whose task has another state now (succeeded, revoked, or running after an
    earlier replay) is left out, so replaying twice does not run a task twice.
    """
    newest = list({d.id: d for d in letters}.values())
    current = app.backend.get_many([d.id for d in newest])
    chosen = [d for d, record in zip(newest, current) if record is None or record.status == FAILURE]
    if dry_run or not chosen:
        return chosen
    sends = [_resend(app, letter) for letter in chosen]  # before anything is forgotten or sent
    app.backend.forget([i for letter, (_value, headers) in zip(chosen, sends) for i in (letter.id, *_stopped(headers))])
    producer = app.producer
    for letter, (value, headers) in zip(chosen, sends):
        producer.produce(letter.original_topic, letter.record.key, value, headers)
    app.flush()
    return chosen


def _stopped(headers: Headers) -> list[str]:
    """The ids whose results a letter's failure failed: what follows it in its chain."""
    header = dict(headers).get(H_CANVAS)
    return [] if header is None or flow.problem(header) is not None else flow.following_ids(flow.parse(header))


def _resend(app: Taskq, letter: DeadLetter) -> tuple[bytes | None, Headers]:
    """Value and headers to send again: the letter's; for a letter that left its value and long headers
    out (too large), the original's, read where it was."""
    if letter.value_ref is None:
        return letter.record.value, letter.replay_headers()
    original = _original(app, letter.value_ref, letter.id)
    return original.value, DeadLetter(original).replay_headers()


def _original(app: Taskq, ref: tuple[str, int, int], letter_id: str) -> Record:
    """The record a dead letter by reference names, read where it was."""
    topic, partition, offset = ref
    try:
        reader = app.broker.reader(topic, {partition: offset})
    except BrokerError:  # a broker that reads only in a group (the embedded one): scan the topic
        found = next((r for r in read_topic(app, topic) if (r.partition, r.offset) == (partition, offset)), None)
        if found is not None:
            return found
    else:
        deadline = time.monotonic() + 10.0
        try:
            while time.monotonic() < deadline:
                for record in reader.read(1, 1.0):
                    if record.partition == partition and record.offset == offset:
                        return record
                    deadline = 0.0  # the reader moved past it: gone
        finally:
            reader.close()
    raise TaskqError(f"dead letter {letter_id} left its value out and its original {topic}[{partition}]@{offset} "
                     "is no longer in the topic (retention): it cannot be replayed")


def purge(app: Taskq, task: str) -> int:
    """Delete every dead letter of ``task``; returns how many were removed."""
    topic = app.dlq_topic(_topic(app, task))
    marks = app.broker.watermarks(topic)
    app.broker.delete_records(topic, {p: hi for p, (_lo, hi) in marks.items()})
    return sum(hi - lo for lo, hi in marks.values())


def _topic(app: Taskq, task: str) -> str:
    if task in app.tasks:
        return app.tasks[task].topic
    return task if task.startswith(app.settings.topic_prefix) else app.topic_for(task)
