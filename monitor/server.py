"""``taskq monitor``: build the monitor for an app and serve it with uvicorn."""

from __future__ import annotations

import logging

from taskq.monitor.core import Monitor, MonitorConfig
from taskq.app import Taskq

log = logging.getLogger("taskq.monitor")


def serve(app: Taskq, config: MonitorConfig, host: str = "127.0.0.1", port: int = 5555) -> None:
    """Run until interrupted; the consumer and sampler threads stop with the server."""
    import uvicorn

    from taskq.monitor.web import create_app

    monitor = Monitor(app, config).start()
    if host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        log.warning("monitor listens on %s without a token: anyone who reaches it can submit and replay tasks; "
                    "pass --token or set TASKQ_MONITOR_TOKEN", host)
    try:
        uvicorn.run(create_app(monitor), host=host, port=port, log_level="warning")
    finally:
        monitor.stop()
        app.close()
