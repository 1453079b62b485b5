"""The sender: produce a batch of messages and wait until the broker acknowledged every one.

Used by the finisher (retries and dead letters) and the forwarder (due delayed messages), each from
its own thread with its own batch, over the worker's one producer. Delivery reports arrive through
per-message callbacks served by ``producer.poll``. A message the broker refuses as too large
(:class:`~taskq.errors.MessageTooLarge`) is sent once more without its traceback header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from taskq.brokers.base import Headers, Producer, Record
from taskq.deadletter import H_TRACEBACK
from taskq.errors import BackendError, BrokerError, MessageTooLarge

log = logging.getLogger("taskq.worker")
T = TypeVar("T")
Outgoing = tuple[str, bytes | None, bytes | None, Headers]  # topic, key, value, headers
Report = Callable[[BaseException | None, Record | None], None]


def retrying(what: str, fn: Callable[[], T], give_up: type[Exception] | None = None) -> T:
    """Run ``fn`` until it succeeds: an outage delays commits, it never loses an outcome.

    An error of type ``give_up`` is re-raised at once (no retry can mend it).
    """
    pause = 0.1
    while True:
        try:
            return fn()
        except (BackendError, BrokerError) as exc:
            if give_up is not None and isinstance(exc, give_up):
                raise
            log.warning("%s failed, retrying in %.1f s: %s", what, pause, exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class Sender:
    """Produces batches through ``producer`` and returns once all of them are acknowledged."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def send_all(self, messages: list[Outgoing]) -> None:
        """Produce and wait for every acknowledgement; re-send what failed until it succeeds."""
        pending = messages
        while pending:
            failed: list[Outgoing] = []
            acked = [0]

            def reporter(message: Outgoing) -> Report:
                def report(err: BaseException | None, _record: Record | None) -> None:
                    acked[0] += 1
                    if err is not None:
                        failed.append(message)
                return report

            for m in pending:
                self._produce(m, reporter(m))
            while acked[0] < len(pending):
                self.producer.poll(0.1)
            if failed:
                log.warning("%d retry/dead-letter messages not acknowledged; sending again", len(failed))
                time.sleep(0.5)
            pending = failed

    def _produce(self, message: Outgoing, report: Report) -> None:
        """Queue one message; a message refused as too large is sent again without its traceback."""
        topic, key, value, headers = message
        producer = self.producer
        try:
            retrying("produce", lambda: producer.produce(topic, key, value, headers, report), MessageTooLarge)
        except MessageTooLarge as exc:
            slim = [(k, v) for k, v in headers if k != H_TRACEBACK]
            log.error("cannot send to %s (%s); sending it without its traceback header", topic, exc)
            retrying("produce", lambda: producer.produce(topic, key, value, slim, report))

    def flush(self, timeout: float) -> None:
        self.producer.flush(timeout)
