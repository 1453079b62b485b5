"""``Monitor``: the app, the event consumer, the lag sampler, the state, metrics and live fan-out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from taskq.monitor.consumer import EventConsumer
from taskq.monitor.live import Broadcaster
from taskq.monitor.metrics import Metrics
from taskq.monitor.state import State
from taskq.monitor.topics import LagSampler
from taskq.monitor.usage import UsageReader
from taskq.app import Taskq
from taskq.config import redact_url

TOKEN_ENV = "TASKQ_MONITOR_TOKEN"


@dataclass
class MonitorConfig:
    """How the monitor reads and what it keeps."""

    since: float = 0.0  # replay events from this epoch (0 = the whole topic)
    max_tasks: int = 10_000  # tasks kept in memory (least recently updated dropped first)
    lag_threshold: int = 1_000  # a group's lag above this raises the alert on the overview
    lag_interval: float = 2.0  # seconds between lag samples
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)


class Monitor:
    """Everything the web app reads; ``start()`` runs the consumer and sampler threads."""

    def __init__(self, app: Taskq, config: MonitorConfig | None = None) -> None:
        self.app = app
        self.config = config or MonitorConfig()
        self.state = State(self.config.max_tasks)
        self.live = Broadcaster()
        self.sampler = LagSampler(app, self.config.lag_interval)
        self.metrics = Metrics(self.state, self.sampler)
        self.usage = UsageReader(app, self.metrics.usage)
        self.consumer = EventConsumer(app, [self.state.apply, self.metrics.observe, self.usage.observe,
                                            self.live.publish], since=self.config.since)
        self.sampler.listeners.append(lambda _topics: self.live.publish({"type": "lag-sampled", "ts": time.time()}))
        self.started_at = 0.0

    def start(self) -> Monitor:
        self.started_at = time.time()
        self.usage.start()
        self.consumer.start()
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.consumer.stop()
        self.sampler.stop()
        self.usage.stop()

    def lag_alerts(self) -> list[dict[str, Any]]:
        """Groups whose lag is above the threshold."""
        return [{"group": g, "lag": lag, "threshold": self.config.lag_threshold}
                for g, lag in self.sampler.group_lag().items() if lag > self.config.lag_threshold]

    def health(self) -> dict[str, Any]:
        return {"events_topic": self.consumer.topic, "events_received": self.consumer.received,
                "caught_up": self.consumer.caught_up.is_set(), "tasks_kept": len(self.state),
                "max_tasks": self.state.max_tasks, "evicted": self.state.evicted,
                "consumer_error": self.consumer.error, "lag_error": self.sampler.error,
                "since": self.config.since, "broker": redact_url(self.app.broker_url)}
