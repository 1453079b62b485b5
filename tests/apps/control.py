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


_redis = None


def _store():  # noqa: ANN202 - a redis client, made on first use in the worker process
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ.get("RECORDER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _redis


@app.task(bind=True, key="key")
def slow(self, key: str, seconds: float) -> str:  # noqa: ANN001
    """Mark the start in Redis, then sleep ``seconds`` (in C: only a process kill ends it early)."""
    _store().set(f"{os.environ.get('RECORDER_PREFIX', 'ctl')}:started:{self.request.id}", time.time())
    time.sleep(seconds)
    return key


@app.task(bind=True, key="key")
async def asleep(self, key: str, seconds: float) -> str:  # noqa: ANN001
    """The coroutine version of ``slow``."""
    import asyncio

    _store().set(f"{os.environ.get('RECORDER_PREFIX', 'ctl')}:started:{self.request.id}", time.time())
    await asyncio.sleep(seconds)
    return key
