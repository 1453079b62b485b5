"""A test app whose task records every execution in Redis: order per key, overlaps, which worker.

Configured only by environment (the worker runs it in another process): TASKQ_* for the app,
RECORDER_REDIS_URL and RECORDER_PREFIX for the bookkeeping.
"""

from __future__ import annotations

import os
import time

import redis

from taskq import Taskq

app = Taskq("recorder")
_prefix = os.environ.get("RECORDER_PREFIX", "rec")
_redis = redis.Redis.from_url(os.environ.get("RECORDER_REDIS_URL", "redis://127.0.0.1:6379/0"))
_worker = os.environ.get("RECORDER_WORKER", str(os.getpid()))


@app.task(key="key")
def work(key: str, seq: int, sleep: float = 0.0) -> int:
    """Record (key, seq); count overlapping runs of one key."""
    running = f"{_prefix}:running:{key}"
    if _redis.incr(running) > 1:
        _redis.incr(f"{_prefix}:overlaps")
    pipe = _redis.pipeline(transaction=False)
    pipe.rpush(f"{_prefix}:order:{key}", seq)
    pipe.incr(f"{_prefix}:executions")
    pipe.hincrby(f"{_prefix}:by_worker", _worker, 1)
    pipe.execute()
    if sleep:
        time.sleep(sleep)
    _redis.decr(running)
    return seq
