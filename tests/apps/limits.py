"""Tasks that overrun their time limits, or raise what stops a process (configured by TASKQ_* environment
variables)."""

from __future__ import annotations

import asyncio
import time

from taskq import SoftTimeLimitExceeded, Taskq

app = Taskq("limits")


@app.task(time_limit=1.0, max_retries=0)
def stuck(seconds: float) -> str:
    """Busy for ``seconds``: past the hard limit it is ended."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "finished"


@app.task(soft_time_limit=0.3, time_limit=5.0, max_retries=0)
def polite(seconds: float) -> str:
    """Catches the soft limit and returns early."""
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@app.task(time_limit=0.5, max_retries=0)
async def slow_coroutine(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@app.task(time_limit=1.0, rate_limit="240/m", max_retries=0)
async def rate_limited_coroutine(i: int) -> int:
    """Four runs a second, each well within its time limit (however long its turn takes to come)."""
    await asyncio.sleep(0.01)
    return i


@app.task(time_limit=1.0, soft_time_limit=0.8, rate_limit="240/m", max_retries=0)
def rate_limited(i: int) -> int:
    """The plain-function version of ``rate_limited_coroutine``, for the threads and processes pools."""
    time.sleep(0.01)
    return i


@app.task
def quick(x: int) -> int:
    return x * 2


@app.task(max_retries=0)
def interrupted(x: int) -> None:
    """Raises KeyboardInterrupt itself (Ctrl-C never reaches a task: the worker handles SIGINT)."""
    raise KeyboardInterrupt(f"raised by the task {x}")


@app.task(max_retries=0)
async def interrupted_coroutine(x: int) -> None:
    raise KeyboardInterrupt(f"raised by the coroutine {x}")
