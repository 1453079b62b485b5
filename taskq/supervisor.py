"""``taskq worker --processes N``: N worker processes (group members) under one supervisor.

The supervisor starts each child as its own ``taskq worker`` command, restarts one that dies, and on
SIGTERM or SIGINT forwards the signal to every child and waits for them to finish and leave the group.
A child that keeps dying is given up on (``max_restarts`` within ``restart_window`` seconds): then the
supervisor stops the others and exits non-zero, rather than restarting forever.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("taskq.supervisor")


@dataclass
class Child:
    """One worker process and its recent restarts."""

    index: int
    name: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    """Keeps ``count`` copies of ``command`` (its ``-n`` name suffixed per child) running until stopped."""

    def __init__(self, worker_args: Sequence[str], count: int, name: str, log_level: str = "WARNING",
                 max_restarts: int = 5, restart_window: float = 60.0, stop_timeout: float = 60.0) -> None:
        self.worker_args = list(worker_args)
        self.children = [Child(i, f"{name}-{i}") for i in range(count)]
        self.log_level = log_level
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._signal = signal.SIGTERM
        self._forwarded = False  # the stop signal went to the children

    def command(self, child: Child) -> list[str]:
        return [sys.executable, "-m", "taskq.cli", "--log-level", self.log_level, "worker",
                *self.worker_args, "-n", child.name]

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(self.command(child))
        log.warning("supervisor: started %s (pid %d)", child.name, child.proc.pid)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every child and stop restarting them (safe from a signal handler); once
        they have it, forward it again at once (a worker's second signal: leave without waiting)."""
        self._signal = signal.Signals(signum)
        if self._forwarded:
            self._forward()
        self._stopping.set()

    def _forward(self) -> None:
        self._forwarded = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(self._signal)

    def run(self) -> int:
        """Supervise until stopped or a child keeps dying; the exit status for the command."""
        for child in self.children:
            self._start(child)
        status = 0
        while not self._stopping.wait(0.2):
            for child in self.children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                now = time.monotonic()
                while child.restarts and now - child.restarts[0] > self.restart_window:
                    child.restarts.popleft()
                if len(child.restarts) >= self.max_restarts:
                    log.error("supervisor: %s died %d times within %.0f s (last exit %d); stopping every worker",
                              child.name, len(child.restarts) + 1, self.restart_window, code)
                    status = 1
                    self._stopping.set()
                    break
                child.restarts.append(now)
                log.warning("supervisor: %s (pid %d) exited %d; restarting it", child.name, child.proc.pid, code)
                self._start(child)
        return self._shutdown() or status

    def _shutdown(self) -> int:
        """Forward the stop signal, wait for every child; non-zero if any did not stop cleanly."""
        self._forward()
        deadline = time.monotonic() + self.stop_timeout
        status = 0
        for child in self.children:
            if child.proc is None:
                continue
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("supervisor: %s did not stop within %.0f s; killing it", child.name, self.stop_timeout)
                child.proc.kill()
                code = child.proc.wait()
            status = status or max(0, code)
        log.warning("supervisor: every worker stopped")
        return status
