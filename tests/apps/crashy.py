"""Tasks that end their pool process, or fork it, for the processes pool's tests."""

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
def forks() -> str:
    """Fork; the copy returns from the task too (as code that forks without exec can), a little later."""
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        return "copy"
    os.waitpid(pid, 0)
    return "parent"


@app.task(max_retries=0)
def echo(value: int) -> int:
    return value
