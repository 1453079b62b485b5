"""Control commands: ``taskq beat``, ``taskq replay``, ``taskq topics``; worker supervision and beat threads."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

import click

from taskq.app import Taskq
from taskq.config import redact_url
from taskq.errors import TaskqError
from taskq.app import load_app

APP_HELP = "The app: module, module.attribute or module:attribute."
APP_OPTION = click.option("-A", "--app", "app_path", required=True, help=APP_HELP)
STOP_MARGIN = 30.0  # s a worker gets past its stop_timeout to commit and leave its group before it is killed


def _app(app_path: str) -> Taskq:
    try:
        return load_app(app_path)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


# -- beat -----------------------------------------------------------------------------------------


class BeatThread(threading.Thread):
    """A beat running beside a worker (``taskq worker --beat``)."""

    def __init__(self, app: Taskq) -> None:
        from taskq.beat import Beat

        super().__init__(name="taskq-beat", daemon=True)
        self.beat = Beat(app)

    def run(self) -> None:
        self.beat.run()

    def stop(self) -> None:
        self.beat.stop()


def start_beat_thread(app: Taskq) -> BeatThread:
    try:
        thread = BeatThread(app)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    thread.start()
    return thread


@click.command()
@APP_OPTION
@click.option("--lease", default=10.0, show_default=True,
              help="Seconds a dead leader keeps the lease (the hand-over time); renewed every third of it.")
@click.option("-n", "--name", default=None, help="Beat name (default host:pid:random).")
def beat(app_path: str, lease: float, name: str | None) -> None:
    """Send periodic tasks on their schedule; run several for fail-over, one leads at a time."""
    from taskq.beat import Beat

    app = _app(app_path)
    try:
        b = Beat(app, name=name, lease=lease)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc

    def stop(_signum: int, _frame: object) -> None:
        b.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"taskq beat {b.name}: {len(app.schedules)} schedule(s) on {redact_url(app.broker_url)}", err=True)
    try:
        sent = b.run()
    finally:
        app.close()
    click.echo(f"taskq beat {b.name} stopped: {sent} tick(s) sent", err=True)


# -- worker supervision ---------------------------------------------------------------------------


def run_supervised(worker_args: Sequence[str], count: int, name: str | None, log_level: str,
                   beat_app: str | None, stop_timeout: float) -> int:
    """``taskq worker --processes N``: the supervisor's exit status. A worker that has not exited
    ``STOP_MARGIN`` seconds after its own ``stop_timeout`` is killed."""
    import socket

    from taskq.supervisor import Supervisor

    supervisor = Supervisor(worker_args, count, name or socket.gethostname(), log_level,
                            stop_timeout=stop_timeout + STOP_MARGIN)
    beat_thread = start_beat_thread(_app(beat_app)) if beat_app else None

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("taskq").warning("signal %d: stopping %d worker process(es)", signum, count)
        supervisor.stop(signum)
        if beat_thread is not None:
            beat_thread.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"taskq supervisor: {count} worker process(es)", err=True)
    status = supervisor.run()
    if beat_thread is not None:
        beat_thread.stop()
        beat_thread.join(30)
    return status


# -- replay ---------------------------------------------------------------------------------------


@click.command()
@APP_OPTION
@click.argument("task")
@click.option("--from-offset", type=click.IntRange(0), default=None, help="Start at this offset (every partition).")
@click.option("--from-time", default=None, help="Start at the first message at or after this ISO 8601 time.")
@click.option("--to-time", default=None, help="Stop before the first message at or after this ISO 8601 time.")
@click.option("--partition", type=int, default=None, help="Only this partition.")
@click.option("--key", default=None, help="Only messages with this key.")
@click.option("--dry-run", is_flag=True, help="Only list what would be sent.")
def replay(app_path: str, task: str, from_offset: int | None, from_time: str | None, to_time: str | None,
           partition: int | None, key: str | None, dry_run: bool) -> None:
    """Send TASK's historical messages again (new ids, original keys, provenance headers)."""
    from taskq import replay as rp

    app = _app(app_path)
    try:
        win = rp.window(app, task, from_offset, rp.parse_time(from_time) if from_time else None,
                        rp.parse_time(to_time) if to_time else None, partition)
        done = rp.replay(app, win, key, dry_run)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    for record, new_id in done:
        click.echo(f"{record.topic}[{record.partition}]@{record.offset} key={(record.key or b'').decode(errors='replace')}"
                   f" id={(record.header('id') or b'').decode()} -> {new_id}")
    click.echo(f"{'would replay' if dry_run else 'replayed'} {len(done)} task(s) of {win.topic}", err=True)


# -- topics ---------------------------------------------------------------------------------------


def _required_app(ctx: click.Context, app_path: str | None) -> str:
    """``-A`` given before the subcommand or after it (so that ``alter --help`` needs none)."""
    app_path = app_path or (ctx.obj or {}).get("app_path")
    if not app_path:
        raise click.MissingParameter(ctx=ctx, param_hint="'-A' / '--app'", param_type="option")
    return app_path


TOPICS_APP = click.option("-A", "--app", "app_path", default=None, help=f"{APP_HELP}  [required]")


@click.group(invoke_without_command=True)
@TOPICS_APP
@click.pass_context
def topics(ctx: click.Context, app_path: str | None) -> None:
    """List the app's topics (partitions, replication, retention, lag); `alter` grows one."""
    ctx.obj = {**(ctx.obj or {}), "app_path": app_path}
    if ctx.invoked_subcommand is not None:
        return
    app_path = _required_app(ctx, app_path)
    from rich.console import Console
    from rich.table import Table

    from taskq.topic_admin import rows

    app = _app(app_path)
    try:
        found = rows(app)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    table = Table(title=f"{len(found)} topic(s), lag of group {app.group}")
    for column in ("topic", "kind", "partitions", "replication", "retention", "messages", "lag"):
        table.add_column(column, no_wrap=column == "topic")
    for r in found:
        retention = "forever" if r.retention_ms is None else f"{r.retention_ms / 3_600_000:g} h"
        if "compact" in r.cleanup_policy:
            retention += f" ({r.cleanup_policy})"
        table.add_row(r.topic, r.kind, str(r.partitions), str(r.replication), retention, str(r.messages),
                      "" if r.lag is None else str(r.lag))
    Console(width=200).print(table)


@topics.command("alter")
@click.argument("task")
@click.option("--partitions", type=click.IntRange(1), required=True, help="The new (larger) partition count.")
@TOPICS_APP
@click.pass_context
def topics_alter(ctx: click.Context, task: str, partitions: int, app_path: str | None) -> None:
    """Grow TASK's topic (and its dead letters) to PARTITIONS; prints what that does to key placement."""
    from taskq.topic_admin import grow

    app = _app(_required_app(ctx, app_path))
    try:
        click.echo(grow(app, task, partitions))
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()


# -- revoke ---------------------------------------------------------------------------------------


@click.command()
@APP_OPTION
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also end them if running (processes and asyncio pools).")
def revoke(app_path: str, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks by id: workers skip them (state REVOKED); --terminate ends running ones."""
    from taskq.revocations import revoke as do_revoke

    app = _app(app_path)
    try:
        done = do_revoke(app, task_ids, terminate)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    left = sorted(set(task_ids) - set(done))
    click.echo(f"revoked {len(done)} task(s)" + (f"; already finished: {', '.join(left)}" if left else ""))


CONTROL_COMMANDS = [beat, replay, topics, revoke]
