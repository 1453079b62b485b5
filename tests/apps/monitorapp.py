"""Tasks for the monitor's tests: quick work, a workflow with children, a streamer, and a task that
fails until a marker file exists (so its dead letter can be replayed to success).

Configured by environment: TASKQ_* for the app, MONITOR_MARKER for ``fragile``.
"""

from __future__ import annotations

import os
import time

from taskq import Taskq

app = Taskq("monitorapp")


@app.task(key="user")
def work(n: int, user: str = "u", sleep: float = 0.0) -> int:
    if sleep:
        time.sleep(sleep)
    return n * 2


@app.task(key="user", max_retries=0)
def fragile(x: int, user: str = "u") -> int:
    if not os.path.exists(os.environ.get("MONITOR_MARKER", "/nonexistent")):
        raise ValueError(f"marker missing for {x}")
    return x * 10


@app.task(key="user")
def fan_out(n: int, user: str = "u") -> list[str]:
    """Send ``n`` children (each a ``work``), one of which sends a grandchild: a tree three levels deep."""
    ids = [work.delay(i, user=user).id for i in range(n)]
    ids.append(relay.delay(n, user=user).id)
    return ids


@app.task(key="user")
def relay(n: int, user: str = "u") -> str:
    return work.delay(n * 100, user=user).id


@app.task(bind=True, key="user")
def tokens(self, text: str, user: str = "u") -> str:
    """Publish each word as a partial result, then return the text."""
    for word in text.split():
        self.app.backend.append_chunk(self.request.id, word)
        time.sleep(0.01)
    return text


@app.task(key="user")
def backlog(n: int, user: str = "u") -> int:
    """Not consumed by the browser test's worker: its messages wait, so the topic lags."""
    return n
