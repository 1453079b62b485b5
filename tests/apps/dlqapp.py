"""A task that fails until a marker file exists (TASKQ_LOCAL_PATH and DLQ_MARKER from the test)."""

from __future__ import annotations

import os

from taskq import Taskq

app = Taskq("dlqapp")


@app.task(key="user", max_retries=0)
def flaky(x: int, user: str = "u") -> int:
    if not os.path.exists(os.environ["DLQ_MARKER"]):
        raise ValueError(f"not yet: {x}")
    return x * 10
