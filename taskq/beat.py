"""The beat: sends periodic tasks on their ticks; with several beats running, one leads.

Leadership is a lease in the result backend (Redis ``SET NX PX``, renewed every third of the lease):
a beat that dies is replaced within one lease. Each tick is also claimed on its own (``SET NX``), so
even two beats that both believe they lead send a tick once, and the tick's task id is derived from
the schedule and the tick time. The claim first lives one lease and is made long only once Kafka has
acknowledged the tick's message: a beat killed (or a send failed) in between leaves a claim that runs
out, and the next leader sends that tick (with the same task id). A beat that starts (or takes
over) sends the latest tick it missed, only that one: older missed ticks are skipped, never sent in a
burst. A schedule seen for the first time starts with its next tick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from taskq.app import Taskq
from taskq.errors import BackendError, BrokerError, ConfigError
from taskq.schedules import Periodic

log = logging.getLogger("taskq.beat")
SINCE_TTL = 365 * 86400.0  # how long a schedule's first-seen time is remembered (beyond it: a fresh start)
TICK_MARGIN = 300.0  # a tick's claim outlives the tick's period by this much (clock skew between beats)


class Beat:
    """Runs the app's periodic schedules until :meth:`stop`.

    ``lease`` is the hand-over time: a leader renews it every ``lease / 3`` seconds, and a beat that
    dies is replaced once it runs out. ``clock`` is for tests.
    """

    def __init__(self, app: Taskq, name: str | None = None, lease: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not app.schedules:
            raise ConfigError("no periodic tasks: declare them with @app.periodic_task(cron=...|every=...)")
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = lease
        self.clock = clock
        self.leading = False
        self.sent = 0
        self._stop = threading.Event()
        self._since: dict[str, float] = {}

    @property
    def _leader_claim(self) -> str:
        return f"beat:{self.app.group}:leader"

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Lead or stand by until stopped; returns how many ticks this beat sent."""
        log.info("beat %s: %d schedule(s), lease %.1f s", self.name, len(self.app.schedules), self.lease)
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except (BackendError, BrokerError) as exc:  # an outage: stand by, try again next round
                    log.warning("beat %s: %s", self.name, exc)
                    self.leading = False
                self._stop.wait(self._pause())
        finally:
            self.resign()
        return self.sent

    def _pause(self) -> float:
        renew = self.lease / 3
        if not self.leading:
            return renew
        now = self.clock()
        due = min(s.next_tick(now) for s in self.app.schedules.values()) - now
        return max(0.01, min(renew, due + 0.005))

    def step(self) -> list[str]:
        """Renew or take the lease; as leader send every tick that is due. Returns the ids sent."""
        if not self._lead():
            return []
        now = self.clock()
        fired = [fired for s in self.app.schedules.values() if (fired := self._fire(s, now))]
        if fired:
            self.app.flush()  # raises unless Kafka acknowledged every tick: their short claims run out
            for claim, task_id, ttl in fired:
                if not self.app.backend.extend(claim, task_id, ttl):  # the send outlasted the short claim
                    self.app.backend.claim(claim, task_id, ttl)
            self.sent += len(fired)
        return [task_id for _, task_id, _ in fired]

    def resign(self) -> None:
        """Give the lease up at once (a clean stop hands over without waiting for it to run out)."""
        if self.leading:
            try:
                self.app.backend.release(self._leader_claim, self.name)
            except BackendError as exc:
                log.warning("beat %s could not release the lease (it runs out by itself): %s", self.name, exc)
            self.leading = False

    def _lead(self) -> bool:
        backend = self.app.backend
        if self.leading:
            if backend.extend(self._leader_claim, self.name, self.lease):
                return True
            log.warning("beat %s lost the lease", self.name)
            self.leading = False
        holder = backend.claim(self._leader_claim, self.name, self.lease)
        if holder is None:
            log.info("beat %s leads", self.name)
            self.leading = True
        return self.leading

    def _fire(self, schedule: Periodic, now: float) -> tuple[str, str, float] | None:
        """Send the latest tick of ``schedule`` at or before ``now`` unless it was sent (or is being
        sent): the tick's claim, task id and the claim's life once the send is acknowledged."""
        since = self._first_seen(schedule, now)
        tick = schedule.last_tick(now)
        if tick <= since:
            return None
        period = schedule.next_tick(tick) - tick
        task_id = schedule.task_id(self.app.group, tick)
        claim = f"beat:{self.app.group}:tick:{schedule.name}:{tick:.3f}"
        if self.app.backend.claim(claim, task_id, self.lease) is not None:
            return None
        at = datetime.fromtimestamp(tick, timezone.utc).isoformat()
        self.app.get_task(schedule.task).apply_async(
            schedule.args, schedule.kwargs, key=schedule.key, task_id=task_id,
            headers={"beat-schedule": schedule.name, "beat-tick": at})
        log.info("beat %s sent %s for tick %s (%s)", self.name, schedule.name, at, task_id)
        return claim, task_id, period + TICK_MARGIN

    def _first_seen(self, schedule: Periodic, now: float) -> float:
        """When any beat first ran ``schedule`` (ticks up to then are not sent)."""
        since = self._since.get(schedule.name)
        if since is None:
            claim = f"beat:{self.app.group}:since:{schedule.name}"
            holder = self.app.backend.claim(claim, repr(now), SINCE_TTL)
            since = self._since[schedule.name] = now if holder is None else float(holder)
        return since
