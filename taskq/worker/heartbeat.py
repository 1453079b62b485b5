"""The heartbeat thread: calls the worker_heartbeat hooks every ``interval`` seconds while running."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Heartbeat:
    """Runs ``beat()`` every ``interval`` s on its own thread, from ``start()`` until ``stop()``."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskq-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()
