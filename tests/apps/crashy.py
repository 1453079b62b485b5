"""Tasks that end their pool process, for the processes pool's tests."""

from __future__ import annotations

import ctypes
import os
import signal
import time

from taskq import Taskq

app = Taskq("crashy")


@app.task(max_retries=0)
def die(how: str) -> str:
    """End this process: ``exit`` (os._exit(3)), ``kill`` (SIGKILL, as the OOM killer does) or ``segv``."""
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        ctypes.string_at(0)
    return "alive"


@app.task(max_retries=0)
def echo(value: int) -> int:
    return value
