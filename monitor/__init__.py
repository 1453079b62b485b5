"""taskq's monitoring web UI, REST API, Prometheus metrics and the Flower bridge.

Start it with ``taskq monitor -A app`` (``pip install 'taskq[monitor]'``); ``taskq flower`` runs the
bridge that lets the real Flower show taskq workers and tasks.
"""

from monitor.core import Monitor, MonitorConfig

__all__ = ["Monitor", "MonitorConfig"]
