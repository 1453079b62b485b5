"""The ``taskq`` command: ``worker``, ``demo``, ``bench``."""

from __future__ import annotations

import logging
import signal
import sys

import click

from taskq.errors import TaskqError
from taskq.pools import POOLS, load_app


@click.group()
@click.option("--log-level", default="WARNING", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def main(log_level: str) -> None:
    """taskq: a Celery-style task queue on Apache Kafka."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "" not in sys.path:  # like celery: -A modules are found in the current directory
        sys.path.insert(0, "")


@main.command()
@click.option("-A", "--app", "app_path", required=True, help="The app: module or module:attribute.")
@click.option("-Q", "--queues", multiple=True, help="Task names or topics to consume (default: all tasks).")
@click.option("-c", "--concurrency", default=8, show_default=True, help="Tasks run at once.")
@click.option("--pool", type=click.Choice(sorted(POOLS)), default="threads", show_default=True)
@click.option("--batch-size", default=1000, show_default=True, help="Records fetched per poll.")
@click.option("--prefetch", type=int, default=None, help="Records taken but unfinished at most.")
@click.option("-n", "--name", default=None, help="Worker name (default host:pid).")
def worker(app_path: str, queues: tuple[str, ...], concurrency: int, pool: str, batch_size: int,
           prefetch: int | None, name: str | None) -> None:
    """Consume task topics and run tasks until SIGTERM or SIGINT."""
    from taskq.worker import Worker

    try:
        app = load_app(app_path)
        w = Worker(app, queues or None, concurrency=concurrency, pool=pool, batch_size=batch_size,
                   prefetch=prefetch, name=name, app_path=app_path)
    except (TaskqError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("taskq").warning("signal %d: finishing in-flight tasks, then leaving", signum)
        w.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"taskq worker {w.name}: {len(w.topics)} topic(s) on {app.broker_url}, pool {pool} x{concurrency}",
               err=True)
    try:
        stats = w.run()
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    click.echo(f"taskq worker {w.name} stopped: {stats}", err=True)


@main.command()
@click.option("-n", "--tasks", "count", default=60, show_default=True, help="How many prompts to send.")
@click.option("--users", default=12, show_default=True, help="Distinct user keys.")
def demo(count: int, users: int) -> None:
    """Run a small GenAI-flavoured workload on the embedded broker (no server needed)."""
    from taskq.demo import run_demo

    try:
        run_demo(count, users)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
