"""An app that cannot be imported again once its task ran: a pool process started after that fails."""

from __future__ import annotations

import os

from taskq import Taskq

if os.path.exists(os.environ["BRITTLE_MARK"]):
    raise RuntimeError("this app cannot be imported any more")

app = Taskq("brittle")


@app.task(max_retries=0)
def break_imports() -> None:
    """Make the app's import fail from now on, then end this pool process."""
    open(os.environ["BRITTLE_MARK"], "w").close()
    os._exit(1)


@app.task(max_retries=0)
def echo(value: int) -> int:
    return value
