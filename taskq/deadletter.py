"""The dead-letter format: the headers the worker adds to a message it gives up on, and their reading.

A dead letter is the original record (key, value, headers) in ``<topic>.dlq`` plus these headers.
The worker builds them with :func:`dead_letter_headers`; ``taskq dlq`` reads them through
:class:`DeadLetter`. No other module knows the header names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from taskq.brokers.base import Headers, Record
from taskq.message import H_ATTEMPTS, H_ETA, H_FIRST_FAILURE, H_ID, H_ORIGIN, H_TASK
from taskq.topics import dlq_origin

H_ERROR_TYPE = "error-type"
H_ERROR_MESSAGE = "error-message"
H_TRACEBACK = "error-traceback"
H_REASON = "dead-reason"
H_WORKER = "worker"
H_ORIGINAL_TOPIC = "original-topic"
H_ORIGINAL_PARTITION = "original-partition"
H_ORIGINAL_OFFSET = "original-offset"
H_DEAD_AT = "dead-at"
H_VALUE_REF = "value-ref"  # "<topic>/<partition>/<offset>": the value was left out, read it there
MAX_ERROR_MESSAGE = 4096  # bytes
MAX_TRACEBACK = 16384  # bytes
SLIM_ERROR_MESSAGE = 512  # bytes, in the smaller forms of a dead letter
MAX_KEPT_HEADER = 256  # bytes: longer original headers are left out of the reference form

#: headers added when a message is dead-lettered; replay strips them
DEAD_HEADERS = frozenset({H_ERROR_TYPE, H_ERROR_MESSAGE, H_TRACEBACK, H_REASON, H_WORKER, H_ORIGINAL_TOPIC,
                          H_ORIGINAL_PARTITION, H_ORIGINAL_OFFSET, H_DEAD_AT, H_VALUE_REF})
Letter = tuple[bytes | None, bytes | None, Headers]  # key, value, headers


def dead_letter_headers(record: Record, reason: str, error_type: str, error_message: str, traceback: str,
                        worker: str) -> Headers:
    """``record``'s headers plus why, where and by whom it was dead-lettered."""
    return list(record.headers) + [
        (H_ERROR_TYPE, error_type.encode()),
        (H_ERROR_MESSAGE, error_message.encode(errors="replace")[:MAX_ERROR_MESSAGE]),
        (H_TRACEBACK, traceback.encode(errors="replace")[:MAX_TRACEBACK]),
        (H_REASON, reason.encode()),
        (H_WORKER, worker.encode()),
        (H_ORIGINAL_TOPIC, record.topic.encode()),
        (H_ORIGINAL_PARTITION, str(record.partition).encode()),
        (H_ORIGINAL_OFFSET, str(record.offset).encode()),
        (H_DEAD_AT, repr(time.time()).encode()),
    ]


def dead_letter_forms(record: Record, reason: str, error_type: str, error_message: str, traceback: str,
                      worker: str) -> list[Letter]:
    """The dead letter of ``record``, then ever smaller forms of it, to send the first the broker takes.

    1. the original key, value and headers, with the error and its traceback;
    2. the error message cut to :data:`SLIM_ERROR_MESSAGE` bytes, no traceback;
    3. no value: a ``value-ref`` header names the original's topic/partition/offset (``taskq dlq
       replay`` reads it from there while the topic keeps it), and only short original headers.
    """
    full = dead_letter_headers(record, reason, error_type, error_message, traceback, worker)
    slim_message = error_message.encode(errors="replace")[:SLIM_ERROR_MESSAGE].decode(errors="ignore")
    slim = dead_letter_headers(record, reason, error_type, slim_message, "", worker)
    kept = Record(record.topic, record.partition, record.offset, record.key, None,
                  [(k, v) for k, v in record.headers if len(k) + len(v or b"") <= MAX_KEPT_HEADER])
    ref = dead_letter_headers(kept, reason, error_type, slim_message, "", worker)
    ref.append((H_VALUE_REF, f"{record.topic}/{record.partition}/{record.offset}".encode()))
    return [(record.key, record.value, full), (record.key, record.value, slim), (record.key, None, ref)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message with the reason the worker gave."""

    record: Record

    def _h(self, name: str) -> str:
        raw = self.record.header(name)
        return raw.decode(errors="replace") if raw is not None else ""

    @property
    def id(self) -> str:
        return self._h(H_ID) or f"{self.record.topic}:{self.record.partition}:{self.record.offset}"

    @property
    def task(self) -> str:
        return self._h(H_TASK)

    @property
    def reason(self) -> str:
        return self._h(H_REASON)

    @property
    def error(self) -> str:
        return f"{self._h(H_ERROR_TYPE)}: {self._h(H_ERROR_MESSAGE)}"

    @property
    def traceback(self) -> str:
        return self._h(H_TRACEBACK)

    @property
    def attempts(self) -> int:
        return int(self._h(H_ATTEMPTS) or 0) + 1

    @property
    def original_topic(self) -> str:
        return self._h(H_ORIGINAL_TOPIC) or dlq_origin(self.record.topic)

    @property
    def value_ref(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the original when this letter left its value out."""
        topic, _, rest = self._h(H_VALUE_REF).rpartition("/")
        topic, _, partition = topic.rpartition("/")
        return (topic, int(partition), int(rest)) if topic else None

    @property
    def dead_at(self) -> float:
        return float(self._h(H_DEAD_AT) or 0)

    def replay_headers(self) -> Headers:
        """The original headers, with attempts and delays reset."""
        drop = DEAD_HEADERS | {H_ATTEMPTS, H_FIRST_FAILURE, H_ETA, H_ORIGIN}
        return [(k, v) for k, v in self.record.headers if k not in drop]
