"""taskq's monitoring web UI, REST API, Prometheus metrics and the Flower bridge.

Start it with ``taskq monitor -A app`` (``pip install 'taskq[monitor]'``); ``taskq flower`` runs the
bridge that lets the real Flower show taskq workers and tasks (``pip install 'taskq[flower]'``).
Importing this package needs no extra; ``Monitor`` and ``MonitorConfig`` load them on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Monitor", "MonitorConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from taskq.monitor import core

        return getattr(core, name)
    raise AttributeError(name)
