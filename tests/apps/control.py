"""A test app for the control features: periodic ticks, unique calls, an echo task.

Configured only by environment (beats and workers run it in other processes): TASKQ_* for the app,
BEAT_EVERY for the tick interval in seconds.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from taskq import Taskq

app = Taskq("control")


@app.periodic_task(every=timedelta(seconds=float(os.environ.get("BEAT_EVERY", "1"))))
def tick() -> float:
    """Runs on every tick of the beat."""
    return time.time()


@app.task(key="key")
def echo(key: str, seq: int, sleep: float = 0.0) -> int:
    """Return ``seq`` (after ``sleep`` seconds)."""
    if sleep:
        time.sleep(sleep)
    return seq


@app.task(unique_for=2.0)
def report(day: str) -> str:
    """Unique per argument for 2 s."""
    return day
