"""``taskq monitor`` and ``taskq flower``: click commands, importing their extras only when run."""

from __future__ import annotations

import click

from taskq.config import redact_url
from taskq.errors import TaskqError

APP_HELP = "The app: module, module.attribute or module:attribute (default: an app from TASKQ_* settings)."


def _load(app_path: str | None):
    from taskq.app import Taskq, load_app

    return load_app(app_path) if app_path else Taskq()


def _missing(exc: ImportError, extra: str) -> click.ClickException:
    return click.ClickException(f"{exc}: install it with pip install 'taskq[{extra}]'")


@click.command()
@click.option("-A", "--app", "app_path", default=None, help=APP_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=5555, show_default=True, help="Port to listen on.")
@click.option("--token", envvar="TASKQ_MONITOR_TOKEN", default=None,
              help="Require this token (env TASKQ_MONITOR_TOKEN).")
@click.option("--since", default="24h", show_default=True,
              help="Replay events from: all, 15m, 6h, 2d, an epoch or an ISO time.")
@click.option("--max-tasks", default=10_000, show_default=True, help="Tasks kept in memory (LRU).")
@click.option("--lag-threshold", default=1_000, show_default=True, help="Group lag above which the overview alerts.")
def monitor(app_path: str | None, host: str, port: int, token: str | None, since: str, max_tasks: int,
            lag_threshold: int) -> None:
    """Serve the monitoring web UI, REST API and /metrics."""
    try:
        from taskq.monitor.consumer import parse_since
        from taskq.monitor.core import MonitorConfig
        from taskq.monitor.server import serve
    except ImportError as exc:
        raise _missing(exc, "monitor") from exc
    try:
        app = _load(app_path)
        config = MonitorConfig(since=parse_since(since), max_tasks=max_tasks, lag_threshold=lag_threshold,
                               token=token)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"taskq monitor on http://{host}:{port}/ reading {redact_url(app.broker_url)}", err=True)
    try:
        serve(app, config, host, port)
    except TaskqError as exc:  # the broker unreachable at start, a bad broker option
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option("-A", "--app", "app_path", default=None, help=APP_HELP)
@click.option("--broker", "celery_broker", envvar="TASKQ_FLOWER_BROKER", required=True,
              help="Redis URL that Flower reads (celery --broker=...), e.g. redis://127.0.0.1:6379/1.")
@click.option("--since", default=None,
              help="Republish events from: all, 15m, 6h, epoch, ISO [default: where the last bridge for this Redis "
                   "stopped, else 1h].")
def flower(app_path: str | None, celery_broker: str, since: str) -> None:
    """Let the real Flower show taskq: republish events as Celery events and answer inspect calls."""
    try:
        import celery  # noqa: F401 - the bridge's Celery app; checked here, before anything starts
        from taskq.monitor.consumer import parse_since
        from taskq.monitor.flower import FlowerBridge
    except ImportError as exc:
        raise _missing(exc, "flower") from exc
    try:
        app = _load(app_path)
        bridge = FlowerBridge(app, celery_broker, since=None if since is None else parse_since(since))
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"taskq flower bridge: {redact_url(app.broker_url)} -> {redact_url(celery_broker)} "
               "(exchange celeryev, celery.pidbox)", err=True)
    bridge.run_forever()
