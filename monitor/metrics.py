"""Prometheus metrics for ``/metrics``: counted from task events, lag read from the sampler.

Everything lives in one ``CollectorRegistry`` per monitor (no module globals), so two monitors in one
process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskq.monitor.state import STATE_OF, State
from taskq.monitor.topics import LagSampler

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Gauges(Collector):
    """Gauges computed at scrape time: lag per group/topic/partition, workers alive, tasks kept."""

    def __init__(self, state: State, sampler: LagSampler) -> None:
        self.state = state
        self.sampler = sampler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import time

        lag = GaugeMetricFamily("taskq_consumer_lag", "Messages not yet committed by the consumer group",
                                labels=["group", "topic", "partition"])
        end = GaugeMetricFamily("taskq_partition_end_offset", "High watermark of the partition",
                                labels=["topic", "partition"])
        for topic in self.sampler.topics:
            for p in topic.partitions:
                end.add_metric([topic.name, str(p.partition)], p.high)
                if topic.group and p.lag is not None:
                    lag.add_metric([topic.group, topic.name, str(p.partition)], p.lag)
        yield lag
        yield end
        now = time.time()
        yield GaugeMetricFamily("taskq_workers_alive", "Workers heard from within three heartbeats",
                                value=sum(w.alive(now) for w in self.state.workers()))
        yield GaugeMetricFamily("taskq_monitor_tasks_kept", "Tasks held in the monitor's bounded view",
                                value=len(self.state))
        states = GaugeMetricFamily("taskq_tasks_current", "Tasks in the monitor's view by name and state",
                                   labels=["task", "state"])
        counts: dict[tuple[str, str], int] = {}
        for t in self.state.tasks(limit=self.state.max_tasks)[1]:
            k = (t.task or "", t.state)
            counts[k] = counts.get(k, 0) + 1
        for (task, st), n in sorted(counts.items()):
            states.add_metric([task, st], n)
        yield states


class Metrics:
    """Counters and histograms fed by ``observe(event)``; ``render()`` is the exposition text."""

    def __init__(self, state: State, sampler: LagSampler) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("taskq_task_events", "Task events by task name and resulting state",
                              ["task", "state"], registry=self.registry)
        self.retries = Counter("taskq_task_retries", "Retries scheduled", ["task"], registry=self.registry)
        self.dead = Counter("taskq_dead_letters", "Tasks sent to the dead-letter topic", ["task"],
                            registry=self.registry)
        self.runtime = Histogram("taskq_task_runtime_seconds", "Task run time", ["task"], buckets=BUCKETS,
                                 registry=self.registry)
        self.queue_wait = Histogram("taskq_task_queue_wait_seconds", "From sent to started", ["task"],
                                    buckets=BUCKETS, registry=self.registry)
        self.tokens = Counter("taskq_llm_tokens", "LLM tokens used by tasks (from result meta)",
                              ["task", "model", "direction"], registry=self.registry)
        self.cost = Counter("taskq_llm_cost_usd", "LLM cost of tasks in US dollars (from result meta)",
                            ["task", "model"], registry=self.registry)
        self.registry.register(_Gauges(state, sampler))
        self.state = state

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        state = STATE_OF.get(kind)
        if state is None:
            return
        name = str(event.get("task") or self._name(event) or "")
        self.events.labels(name, state).inc()
        if kind == "task-retried":
            self.retries.labels(name).inc()
        elif kind == "task-dead":
            self.dead.labels(name).inc()
        if kind in ("task-succeeded", "task-failed") and isinstance(event.get("runtime"), (int, float)):
            self.runtime.labels(name).observe(max(0.0, float(event["runtime"])))
        if kind == "task-started":
            sent, started = event.get("sent"), event.get("started") or event.get("ts")
            if isinstance(sent, (int, float)) and isinstance(started, (int, float)):
                self.queue_wait.labels(name).observe(max(0.0, float(started) - float(sent)))

    def usage(self, task: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Count one LLM call's tokens and cost (fed by :class:`monitor.usage.UsageReader`)."""
        self.tokens.labels(task, model, "input").inc(input_tokens)
        self.tokens.labels(task, model, "output").inc(output_tokens)
        self.cost.labels(task, model).inc(cost)

    def _name(self, event: dict[str, Any]) -> str | None:
        task = self.state.task(str(event.get("id")))
        return task.task if task else None

    def render(self) -> bytes:
        return generate_latest(self.registry)
