"""An app that takes a while to import (a stand-in for a heavy ML import): SIGTERM can arrive meanwhile.

SLOW_IMPORT_MARKER names a file created when the import starts; SLOW_IMPORT_SECONDS how long it takes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from taskq import Taskq

Path(os.environ["SLOW_IMPORT_MARKER"]).touch()
time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "2")))

app = Taskq("slow_import")


@app.task
def ping() -> str:
    return "pong"
