"""The sender: produce a batch of messages and wait until the broker acknowledged every one.

Used by the finisher (retries and dead letters) and the forwarder (due delayed messages), each from
its own thread with its own batch, over the worker's one producer. Delivery reports arrive through
per-message callbacks served by ``producer.poll``. A message may come in several forms, fullest first:
one the broker refuses as too large (:class:`~taskq.errors.MessageTooLarge`) is replaced by the next,
never sent again as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from taskq.brokers.base import Headers, Producer, Record
from taskq.errors import BackendError, BrokerError, MessageTooLarge, OutageTooLong, TaskqError, TopicMissing

log = logging.getLogger("taskq.worker")
T = TypeVar("T")
Outgoing = tuple[str, bytes | None, bytes | None, Headers]  # topic, key, value, headers
Report = Callable[[BaseException | None, Record | None], None]


def retrying(what: str, fn: Callable[[], T], bound: float, give_up: type[Exception] | None = None) -> T:
    """Run ``fn`` until it succeeds, for at most ``bound`` seconds of failures: an outage delays commits,
    it never loses an outcome; a longer one raises :class:`~taskq.errors.OutageTooLong` (the worker stops,
    what was not made durable stays uncommitted and is redelivered).

    An error of type ``give_up`` is re-raised at once (no retry can mend it).
    """
    deadline = time.monotonic() + bound
    pause = 0.1
    while True:
        try:
            return fn()
        except (BackendError, BrokerError) as exc:
            if give_up is not None and isinstance(exc, give_up):
                raise
            if time.monotonic() >= deadline:
                raise outage(what, bound, exc) from exc
            log.warning("%s failed, retrying in %.1f s: %s", what, pause, exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def run_thread(name: str, body: Callable[[], None], on_fatal: Callable[[TaskqError], None] | None,
               expected: type[TaskqError] = TaskqError) -> None:
    """The life of a worker thread (the finisher, the forwarder): ``body()``. An ``expected`` error (an
    outage outlasted its bound) or any other (a bug) ends the thread and stops the worker through
    ``on_fatal``, rather than leave the worker running on without it; what the thread did not finish stays
    uncommitted and is redelivered."""
    try:
        body()
    except expected as exc:
        log.error("%s", exc)
        if on_fatal is not None:
            on_fatal(exc)
    except Exception as exc:  # a bug
        log.exception("the %s thread failed", name)
        if on_fatal is not None:
            on_fatal(TaskqError(f"the {name} thread failed: {exc!r}"))


def outage(what: str, bound: float, cause: object) -> OutageTooLong:
    """The error a worker stops with when ``what`` kept failing for ``bound`` seconds."""
    return OutageTooLong(f"{what} kept failing for {bound:g} s (outage_timeout): {cause}; the worker stops and "
                         "leaves unfinished work uncommitted (it is redelivered): start the worker again once "
                         "the broker and the result backend are reachable")


class Sender:
    """Produces batches through ``producer`` and returns once all of them are acknowledged, waiting out
    an outage for at most ``outage_timeout`` seconds (then :class:`~taskq.errors.OutageTooLong`).

    A topic deleted while in use (:class:`~taskq.errors.TopicMissing`) is created again by ``recreate``
    before the message is sent again."""

    def __init__(self, producer: Producer, outage_timeout: float,
                 recreate: Callable[[str], None] | None = None) -> None:
        self.producer = producer
        self.outage_timeout = outage_timeout
        self.recreate = recreate

    def send_first(self, ladders: list[list[Outgoing]]) -> list[int | None]:
        """Send one form of each message: the first one the broker takes, waiting for every acknowledgement.

        ``ladders[i]`` holds message ``i``'s forms, fullest first. A form refused as too large
        (:class:`~taskq.errors.MessageTooLarge`, when queued or in its delivery report) is never sent
        again: the next form is tried. Other failures (an outage) send the same form again after a
        pause, for at most ``outage_timeout`` seconds in all (then OutageTooLong). Returns, per message, the index of the form acknowledged, or None if every form was
        refused.
        """
        chosen = [0] * len(ladders)
        outcome: list[int | None] = [None] * len(ladders)
        pending = [i for i, forms in enumerate(ladders) if forms]
        pause = 0.1
        deadline = time.monotonic() + self.outage_timeout
        while pending:
            again: list[int] = []
            acked = [0]
            queued = 0

            def reporter(i: int) -> Report:
                def report(err: BaseException | None, _record: Record | None) -> None:
                    acked[0] += 1
                    if err is None:
                        outcome[i] = chosen[i]
                    else:
                        if isinstance(err, MessageTooLarge):
                            chosen[i] += 1
                        again.append(i)
                return report

            for i in pending:
                while chosen[i] < len(ladders[i]):
                    try:
                        self._produce(ladders[i][chosen[i]], reporter(i))
                        queued += 1
                        break
                    except MessageTooLarge as exc:
                        log.warning("%s refused (%s); trying a smaller form", ladders[i][chosen[i]][0], exc)
                        chosen[i] += 1
            while acked[0] < queued:
                self.producer.poll(0.1)
            pending = [i for i in again if chosen[i] < len(ladders[i])]
            if len(pending) < len(again):
                log.error("%d message(s) refused as too large in every form", len(again) - len(pending))
            if pending and time.monotonic() >= deadline:
                raise outage(f"sending {len(pending)} retry/dead-letter/forwarded message(s)", self.outage_timeout,
                             "not acknowledged by the broker")
            if pending:
                log.warning("%d retry/dead-letter/forwarded messages not acknowledged; sending again", len(pending))
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        return outcome

    def _produce(self, message: Outgoing, report: Report) -> None:
        """Queue one message, waiting out a full local queue or an outage; MessageTooLarge is raised."""
        topic, key, value, headers = message
        producer = self.producer

        def produce() -> None:
            try:
                producer.produce(topic, key, value, headers, report)
            except TopicMissing:
                if self.recreate is not None:
                    self.recreate(topic)
                raise  # sent again after a pause, once the producer's metadata shows the topic

        retrying("produce", produce, self.outage_timeout, MessageTooLarge)

    def flush(self, timeout: float) -> None:
        self.producer.flush(timeout)
