"""A batch task on an app configured from the environment (TASKQ_*), for pool tests in worker processes."""

from __future__ import annotations

import os

from taskq import Taskq
from taskq.task import Request

app = Taskq("batchapp")


@app.task(name="tests.apps.batchapp.sizes", batch_size=8, batch_wait=0.2)
def sizes(requests: list[Request]) -> list[dict[str, int]]:
    """Each request's result says how large its batch was and which process ran it."""
    return [{"n": r.args[0], "batch": len(requests), "pid": os.getpid()} for r in requests]
