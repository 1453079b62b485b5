"""Reads the task-events topic and hands every event to the monitor's listeners.

The consumer thread owns its reader. Where the broker reads outside a group (``Broker.reader``) it
starts at the offsets whose timestamps are at or after ``since``; otherwise it joins a fresh group and
reads from the beginning. Either way a restarted monitor rebuilds its view from history (events of the history
present at start older than ``since`` are skipped; later ones are shown whatever their time), and while it runs it sees every event the topic keeps: nothing is sampled or dropped,
unlike Celery's transient event queue. Nothing is committed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from taskq.app import Taskq
from taskq.brokers.base import Record
from taskq.errors import BrokerError, TaskqError
from taskq.events import decode_all

log = logging.getLogger("taskq.monitor")
Listener = Callable[[dict[str, Any]], None]


def events_topic(app: Taskq) -> str:
    """Where workers publish task and worker events (``app.events_topic``)."""
    return app.events_topic


class EventConsumer:
    """A thread that replays the events topic from ``since`` and then follows it."""

    def __init__(self, app: Taskq, listeners: list[Listener], since: float = 0.0, batch: int = 2000,
                 start: dict[int, int] | None = None, on_record: Callable[[int, int], None] | None = None) -> None:
        self.app = app
        self.topic = events_topic(app)
        self.listeners = listeners
        self.since = since
        self.start_at = start or {}  # offsets to read from by partition (resuming), before ``since``
        self.on_record = on_record  # (partition, offset) once a record's events were handed over
        self.batch = batch
        self.group = f"taskq-monitor-{uuid.uuid4().hex[:12]}"
        self.caught_up = threading.Event()  # set once the history present at start is read
        self.received = 0
        self.skipped_old = 0
        self.undecodable = 0
        self.error: str | None = None
        self.mode = ""  # "reader" (outside any group, from since) or "group" (a group of its own)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskq-monitor-events", daemon=True)

    def start(self) -> EventConsumer:
        self.app.ensure_topics({self.topic: self.app.settings.default_partitions})
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _open(self) -> tuple[Callable[[int, float], list[Record]], Callable[[], None], dict[int, int]]:
        """(read, close, end offsets still to reach): read outside any group from the offsets at ``since``,
        or, where the broker cannot, from the start in a group of its own (older events are skipped)."""
        broker = self.app.broker
        marks = broker.watermarks(self.topic)
        try:
            start = broker.offsets_for_time(self.topic, self.since) if self.since > 0 else {
                p: lo for p, (lo, _hi) in marks.items()}
            start.update({p: min(max(o, marks[p][0]), marks[p][1]) for p, o in self.start_at.items() if p in marks})
            reader = broker.reader(self.topic, start)
            self.mode = "reader"
            ends = {p: hi for p, (_lo, hi) in marks.items() if hi > start.get(p, hi)}
            return reader.read, reader.close, ends
        except BrokerError:
            consumer = broker.consumer(self.group, [self.topic])
            self.mode = "group"
            return consumer.consume, consumer.close, {p: hi for p, (lo, hi) in marks.items() if hi > lo}

    def _run(self) -> None:
        read, close, ends = self._open()
        if not ends:
            self.caught_up.set()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    records = read(self.batch, 0.2)
                    failures = 0
                except TaskqError as exc:  # broker down: say so on the overview, try again
                    failures += 1
                    self.error = str(exc)
                    log.warning("events consumer: %s (attempt %d)", exc, failures)
                    self._stop.wait(min(5.0, 0.2 * 2 ** failures))
                    continue
                self.error = None
                for record in records:
                    # --since picks where history starts: an event arriving now is shown whatever its
                    # time says (its worker's clock may be behind)
                    self._handle(record.value, history=record.partition in ends)
                    if self.on_record is not None:
                        self.on_record(record.partition, record.offset)
                    if ends and record.offset + 1 >= ends.get(record.partition, 0):
                        ends.pop(record.partition, None)
                        if not ends:
                            self.caught_up.set()
        finally:
            close()

    def _handle(self, value: bytes | None, history: bool = True) -> None:
        events = decode_all(value)  # taskq.events owns the format: one event or an array of them
        if not events:
            self.undecodable += 1
            return
        for event in events:
            self._handle_event(event, history)

    def _handle_event(self, event: dict[str, Any], history: bool = True) -> None:
        if not isinstance(event.get("ts", 0), (int, float)):
            self.undecodable += 1
            return
        if history and float(event.get("ts") or 0) < self.since:
            self.skipped_old += 1
            return
        self.received += 1
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("monitor listener failed on %s", event.get("type"))


def parse_since(text: str | None, now: float | None = None) -> float:
    """``--since``: ``all``, seconds/minutes/hours/days ago (``90s``, ``15m``, ``6h``, ``2d``), an epoch, or ISO time."""
    now = time.time() if now is None else now
    if not text or text == "all":
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        from taskq.errors import ConfigError

        raise ConfigError(f"bad --since {text!r}: use all, 15m, 6h, 2d, an epoch or an ISO time") from None
    return moment.timestamp()
