"""A test app for the reliability tests: retries counted in Redis, timestamps, and a task that
does not touch Redis at all (for Redis outages).

Configured only by environment (the worker runs it in another process): TASKQ_* for the app,
RECORDER_REDIS_URL / RECORDER_PREFIX for the bookkeeping (as ``tests.support.env_for`` sets them),
RELIABLE_LOG_DIR for ``echo``'s execution log (one file per worker process, one line per run).
"""

from __future__ import annotations

import os
import time

import redis

from taskq import Taskq

app = Taskq("reliable")
_prefix = os.environ.get("RECORDER_PREFIX", "rel")
_redis = redis.Redis.from_url(os.environ.get("RECORDER_REDIS_URL", "redis://127.0.0.1:6379/0"))
_worker = os.environ.get("RECORDER_WORKER", str(os.getpid()))
_log_dir = os.environ.get("RELIABLE_LOG_DIR", "")
_log = None


@app.task(bind=True, key="key", autoretry_for=(ValueError,), max_retries=3, retry_backoff=True,
          retry_backoff_max=2)
def flaky(self, key: str, fails: int, countdown: float | None = None) -> int:
    """Fail the first ``fails`` runs of this task id (counted in Redis), then return the run number.

    Every run records ``self.request.attempts`` and its start time; with ``countdown`` a failure asks
    for the retry through ``self.retry(countdown=...)`` instead of the autoretry backoff.
    """
    tid = self.request.id
    now = time.time()
    pipe = _redis.pipeline(transaction=True)  # MULTI/EXEC: a kill -9 records all of a run or none
    pipe.incr(f"{_prefix}:runs:{tid}")
    pipe.rpush(f"{_prefix}:attempts:{tid}", self.request.attempts)
    pipe.rpush(f"{_prefix}:ran_at:{tid}", repr(now))
    pipe.incr(f"{_prefix}:executions")
    run = pipe.execute()[0]
    if run <= fails:
        if countdown is not None:
            raise self.retry(exc=ValueError(f"run {run} of {fails} failing"), countdown=countdown)
        raise ValueError(f"run {run} of {fails} failing")
    return run


@app.task(key="key")
def stamp(key: str) -> float:
    """When it ran (wall clock of the worker)."""
    _redis.incr(f"{_prefix}:executions")
    return time.time()


@app.task(key="key")
def echo(key: str, seq: int, sleep: float = 0.0) -> int:
    """Return ``seq``; log the run to a file (no Redis here: it keeps running when Redis is down)."""
    global _log
    if _log_dir:
        if _log is None:
            _log = os.open(os.path.join(_log_dir, f"{_worker}-{os.getpid()}.log"),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(_log, f"{seq}\n".encode())  # one O_APPEND write per line: atomic between threads
    if sleep:
        time.sleep(sleep)
    return seq
