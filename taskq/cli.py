"""The ``taskq`` command: ``worker``, ``dlq``, ``events``, ``inspect``, ``lag``, ``demo``, ``bench`` (from a checkout)."""

from __future__ import annotations

import importlib
import gc
import json
import math
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING, Any

import click

from taskq.app import load_app
from taskq.cli_control import APP_HELP, APP_OPTION, CONTROL_COMMANDS
from taskq.config import redact_url
from taskq.errors import TaskqError
from taskq.hooks import Hook, WorkerInfo
from taskq.pools import POOLS

if TYPE_CHECKING:
    from taskq.cli_control import BeatThread


class LazyGroup(click.Group):
    """A click group whose ``lazy`` commands are imported only when looked up (run or listed in help), so
    ``taskq worker`` does not load the monitor's modules; ``lazy`` maps a command name to "module:attribute"."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy={"monitor": "taskq.monitor.cli:monitor",  # extras: monitor, flower
                                  "flower": "taskq.monitor.cli:flower"})
@click.option("--log-level", default="WARNING", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """taskq: a Celery-style task queue on Apache Kafka."""
    ctx.obj = {"log_level": log_level}
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "" not in sys.path:  # like celery: -A modules are found in the current directory
        sys.path.insert(0, "")


def _number(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse NaN, which click's FloatRange lets through (every comparison with it is false)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("must be a number, not NaN", param=param)
    return value


@main.command()
@APP_OPTION
@click.option("-Q", "--queues", multiple=True,
              help="Task names or topics to consume, shell patterns allowed (default: all tasks).")
@click.option("--profile", default=None,
              help="Worker profile: workers/NAME.toml or a .toml path (topics, pool, concurrency, batch size); "
                   "options given here win.")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=None, help="Tasks run at once [default: 8].")
@click.option("--pool", type=click.Choice(sorted(POOLS)), default=None, help="[default: threads]")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Records fetched per poll [default: 1000].")
@click.option("--prefetch", type=click.IntRange(1), default=None, help="Records taken but unfinished at most.")
@click.option("--task-batch-size", type=click.IntRange(1), default=None,
              help="Records per call of batch tasks (overrides @app.task(batch_size=...)).")
@click.option("--task-batch-wait", type=click.FloatRange(0), default=None, callback=_number,
              help="Seconds to wait to fill a batch (overrides batch_wait).")
@click.option("--stop-timeout", type=click.FloatRange(0), default=30.0, show_default=True, callback=_number,
              help="At SIGTERM/SIGINT, seconds to wait for running tasks; those still running then (or at a second "
                   "signal) are left uncommitted and delivered again.")
@click.option("-n", "--name", default=None, help="Worker name (default host:pid).")
@click.option("--processes", type=click.IntRange(1), default=None,
              help="Run N worker processes (group members) under a supervisor that restarts dead ones.")
@click.option("--beat", "with_beat", is_flag=True, help="Also run the periodic-task beat in this process.")
@click.pass_context
def worker(ctx: click.Context, app_path: str, queues: tuple[str, ...], profile: str | None, concurrency: int | None,
           pool: str | None, batch_size: int | None, prefetch: int | None, task_batch_size: int | None,
           task_batch_wait: float | None, stop_timeout: float, name: str | None, processes: int | None,
           with_beat: bool) -> None:
    """Consume task topics and run tasks until SIGTERM or SIGINT."""
    from taskq.profiles import load_profile, worker_options

    try:
        opts = worker_options(load_profile(profile) if profile else None, queues=queues, pool=pool,
                              concurrency=concurrency, fetch=batch_size, prefetch=prefetch,
                              task_batch_size=task_batch_size, task_batch_wait=task_batch_wait)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    queues, pool, concurrency, batch_size, prefetch = opts.queues, opts.pool, opts.concurrency, opts.fetch, opts.prefetch
    if opts.group:  # the profile's own consumer group; worker processes started below inherit it
        os.environ["TASKQ_GROUP"] = opts.group
    # Signal handling first: a SIGTERM while the app is still importing is a clean stop, not a kill.
    stopping: list[int] = []  # signals received; one before the Worker exists stops it before it starts

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if len(stopping) == 1:
            logging.getLogger("taskq").warning("signal %d: finishing running tasks (up to %g s), then leaving; "
                                               "send it again to leave at once", signum, stop_timeout)
        else:
            logging.getLogger("taskq").warning("signal %d again: leaving at once", signum)
        for running in workers:
            running.stop(now=len(stopping) > 1)
        for thread in beats:
            thread.stop()

    workers: list[Worker] = []  # what a signal stops: the worker, and a --beat thread
    beats: list[BeatThread] = []
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from taskq.worker import Worker

    if processes is not None:
        from taskq.cli_control import run_supervised

        args = ["-A", app_path, *[a for q in queues for a in ("-Q", q)], "-c", str(concurrency), "--pool", pool,
                "--batch-size", str(batch_size), *(["--prefetch", str(prefetch)] if prefetch else []),
                *(["--task-batch-size", str(opts.task_batch_size)] if opts.task_batch_size else []),
                *(["--task-batch-wait", str(opts.task_batch_wait)] if opts.task_batch_wait is not None else []),
                "--stop-timeout", str(stop_timeout)]
        sys.exit(run_supervised(args, processes, name, ctx.obj["log_level"], app_path if with_beat else None,
                                stop_timeout))
    # Start-up allocates much and frees little: the cyclic collector's passes over it cost ~6 % of it.
    # Collection resumes once the worker is up (_CollectOnceOnline).
    gc.disable()
    try:
        app = load_app(app_path)
        from taskq.profiles import expand_queues

        selected = expand_queues(list(app.tasks), [t.topic for t in app.tasks.values()], queues) if queues else None
        w = Worker(app, selected, concurrency=concurrency, pool=pool, batch_size=batch_size,
                   prefetch=prefetch, name=name, app_path=app_path, task_batch_size=opts.task_batch_size,
                   task_batch_wait=opts.task_batch_wait, stop_timeout=stop_timeout)
        app.run_startup_checks([t.name for t in w.tasks])
    except (TaskqError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    workers.append(w)
    if stopping:
        app.close()
        click.echo(f"taskq worker {w.name}: stopped before it started", err=True)
        return

    beat = None
    if with_beat:
        from taskq.cli_control import start_beat_thread

        beat = start_beat_thread(app)
        beats.append(beat)
    click.echo(f"taskq worker {w.name}: {len(w.topics)} topic(s) on {redact_url(app.broker_url)}, "
               f"pool {pool} x{concurrency}", err=True)
    app.add_hook(_CollectOnceOnline())
    try:
        stats = w.run()
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if beat is not None:
            beat.stop()
            beat.join(30)
        app.close()
    click.echo(f"taskq worker {w.name} stopped: {stats}", err=True)
    if w.left_running:  # their threads (or an asyncio pool's executor) would hold the exit until they end
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)


class _CollectOnceOnline(Hook):
    """Turns the cyclic collector back on once the worker is up. What start-up loaded lives as long as the
    process: it is frozen out of the collector first, whose full passes over it (~10 ms with a worker's
    modules) would stall every thread of a running worker."""

    def worker_online(self, worker: WorkerInfo) -> None:
        gc.freeze()
        gc.enable()


def _app(app_path: str):  # noqa: ANN202 - Taskq, imported lazily
    try:
        return load_app(app_path)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


@dlq.command("ls")
@APP_OPTION
@click.argument("task")
def dlq_ls(app_path: str, task: str) -> None:
    """List the dead letters of TASK (a task name or topic)."""
    from rich.console import Console
    from rich.table import Table

    from taskq.dlq import dead_letters

    letters = dead_letters(_app(app_path), task)
    table = Table(title=f"{len(letters)} dead letter(s) of {task}")
    table.add_column("id", no_wrap=True, min_width=32)
    for column in ("reason", "error", "attempts"):
        table.add_column(column)
    table.add_column("dead at", no_wrap=True)
    for d in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.dead_at)) if d.dead_at else ""
        table.add_row(_cell(d.id), _cell(d.reason), _cell(d.error[:80]), str(d.attempts), when)
    Console().print(table)


@dlq.command("show")
@APP_OPTION
@click.argument("task")
@click.argument("task_id")
def dlq_show(app_path: str, task: str, task_id: str) -> None:
    """Show one dead letter of TASK in full: headers, arguments, traceback."""
    from taskq.dlq import dead_letters

    for d in dead_letters(_app(app_path), task):
        if d.id == task_id:
            r = d.record
            click.echo(_safe(f"id: {d.id}\ntask: {d.task}\nreason: {d.reason}\nerror: {d.error}\n"
                             f"attempts: {d.attempts}"))
            click.echo(_safe(f"original: {d.original_topic} key={r.key!r}\n"
                             f"location: {r.topic}[{r.partition}]@{r.offset}"))
            click.echo(_safe(f"value: {(r.value or b'').decode(errors='replace')[:2000]}"))
            click.echo(_safe(f"traceback:\n{d.traceback}"))
            return
    raise click.ClickException(f"no dead letter {task_id!r} for {task}")


@dlq.command("replay")
@APP_OPTION
@click.argument("task")
@click.option("--id", "ids", multiple=True, help="Replay these ids (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter of TASK.")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed.")
def dlq_replay(app_path: str, task: str, ids: tuple[str, ...], everything: bool, dry_run: bool) -> None:
    """Send dead letters of TASK back to its topic, with their original id and key."""
    from taskq.dlq import dead_letters, replay

    if not ids and not everything:
        raise click.UsageError("name the dead letters with --id ID (repeatable) or pass --all")
    app = _app(app_path)
    letters = [d for d in dead_letters(app, task) if everything or d.id in ids]
    missing = set(ids) - {d.id for d in letters}
    if missing:
        raise click.ClickException(f"no dead letter(s) {sorted(missing)} for {task}")
    done = replay(app, letters, dry_run)
    click.echo(f"{'would replay' if dry_run else 'replayed'} {len(done)} task(s): {', '.join(d.id for d in done)}")
    if (left := len({d.id for d in letters}) - len(done)) > 0:
        click.echo(f"left {left} already succeeded or in progress (or revoked)")


@dlq.command("purge")
@APP_OPTION
@click.argument("task")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(app_path: str, task: str, yes: bool) -> None:
    """Delete every dead letter of TASK."""
    from taskq.dlq import purge

    if not yes:
        click.confirm(f"delete every dead letter of {task}?", abort=True)
    click.echo(f"purged {purge(_app(app_path), task)} dead letter(s)")


OPTIONAL_APP = click.option("-A", "--app", "app_path", default=None,
                            help=f"{APP_HELP.rstrip('.')} (default: from TASKQ_* settings).")


def _app_or_env(app_path: str | None):  # noqa: ANN202 - Taskq, imported lazily
    if app_path:
        return _app(app_path)
    from taskq.app import Taskq

    try:
        return Taskq("taskq")
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_json(obj: object) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), default=str))


@main.command()
@OPTIONAL_APP
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option("--task", default=None, help="Only this task name.")
@click.option("--state", default=None, help="Only this type or state: started, task-failed, SUCCESS ...")
@click.option("--key", default=None, help="Only this message key.")
@click.option("--since", type=float, default=None, help="Start this many seconds back (default: now).")
@click.option("--count", type=int, default=None, help="Stop after this many matching events.")
@click.option("--timeout", type=float, default=None, help="Stop after this many seconds.")
def events(app_path: str | None, as_json: bool, task: str | None, state: str | None, key: str | None,
           since: float | None, count: int | None, timeout: float | None) -> None:
    """Live tail of task and worker events (Ctrl-C to stop)."""
    from taskq.inspect import follow, matcher

    app = _app_or_env(app_path)
    try:
        match = matcher(task, state, key)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--state") from exc
    deadline = None if timeout is None else time.monotonic() + timeout
    stream = follow(app, None if since is None else time.time() - since)
    seen = 0
    table = None if as_json else _EventsTable()
    try:
        with table.live() if table else _nothing():
            for event in stream:
                if event is not None and match(event):
                    seen += 1
                    if table is None:
                        _print_json(event)
                    else:
                        table.add(event)
                if (count is not None and seen >= count) or (deadline is not None and time.monotonic() > deadline):
                    break
    except KeyboardInterrupt:
        pass
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        stream.close()
        app.close()


class _EventsTable:
    """The latest state of the most recent tasks (and workers), redrawn as events arrive."""

    ROWS = 30

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {}

    def live(self):  # noqa: ANN202 - rich.live.Live
        from rich.live import Live

        self._live = Live(self.render(), refresh_per_second=4, transient=False)
        return self._live

    def add(self, event: dict[str, object]) -> None:
        ident = str(event.get("id") or event.get("worker"))
        self.rows.pop(ident, None)
        self.rows[ident] = event
        while len(self.rows) > self.ROWS:
            self.rows.pop(next(iter(self.rows)))
        self._live.update(self.render())

    def render(self):  # noqa: ANN202 - rich.table.Table
        from rich.table import Table

        table = Table(title="taskq events (latest per task)")
        for column in ("time", "type", "task", "id", "key", "worker", "attempt", "runtime", "error"):
            table.add_column(column, no_wrap=column in ("time", "id"))
        for e in self.rows.values():
            runtime = e.get("runtime")
            table.add_row(time.strftime("%H:%M:%S", time.localtime(float(e["ts"]))), _cell(e["type"]),
                          _cell(e.get("task") or ""), _cell(e.get("id") or ""), _cell(e.get("key") or ""),
                          _cell(e.get("worker") or ""), _cell(e.get("attempt") or ""),
                          f"{runtime:.3f}" if isinstance(runtime, float) else "",
                          _cell(e.get("exc_type") or ""))
        return table


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@main.command("inspect")
@click.argument("what", type=click.Choice(["workers", "active", "stats"]))
@OPTIONAL_APP
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--window", type=float, default=None, help="Seconds of events to read (default 60).")
def inspect_cmd(what: str, app_path: str | None, as_json: bool, window: float | None) -> None:
    """Workers, their active tasks and counters, from the events they publish."""
    from taskq import inspect as insp

    app = _app_or_env(app_path)
    now = time.time()
    try:
        events = insp.read_events(app, now - (window or insp.WINDOW))
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    if what == "workers":
        views = insp.workers(events, now)
        if as_json:
            _print_json([v.as_dict() for v in views])
            return
        _table(f"{len(views)} worker(s)", ["worker", "status", "pool", "concurrency", "active", "processed",
                                           "partitions", "last seen"],
               [[v.name, v.status, v.pool, v.concurrency, v.active, v.processed, len(v.partitions),
                 f"{v.seconds_ago:.1f} s ago"] for v in views])
    elif what == "active":
        tasks = insp.active(events, now)
        if as_json:
            _print_json(tasks)
            return
        _table(f"{len(tasks)} active task(s)", ["id", "task", "worker", "key", "running"],
               [[t["id"], t.get("task"), t.get("worker"), t.get("key"), f"{now - (t.get('started') or now):.1f} s"]
                for t in tasks])
    else:
        result = insp.stats(events, now)
        if as_json:
            _print_json(result)
            return
        _table("worker stats", ["worker", "status", "processed", "active", "events in window"],
               [[n, s["status"], s["processed"], s["active"],
                 ", ".join(f"{k}={v}" for k, v in sorted(s["events"].items()))] for n, s in result.items()])


@main.command("lag")
@OPTIONAL_APP
@click.option("--group", default=None, help="Consumer group (default: the app's).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def lag_cmd(app_path: str | None, group: str | None, as_json: bool) -> None:
    """Per topic and partition: committed offset, end offset, lag; and totals."""
    from taskq.inspect import lag

    app = _app_or_env(app_path)
    try:
        report = lag(app, group)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    if as_json:
        _print_json(report)
        return
    rows = [[p["topic"], p["partition"], "-" if p["committed"] is None else p["committed"], p["end"], p["lag"]]
            for p in report["partitions"]]
    rows += [[f"{topic} (total)", "", "", "", total] for topic, total in report["topics"].items()]
    rows.append(["total", "", "", "", report["total"]])
    _table(f"lag of group {report['group']}", ["topic", "partition", "committed", "end", "lag"], rows)


def _table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(value: object) -> str:
    """``value`` fit for a terminal: control characters (escape sequences that clear the screen, retitle the
    window or colour text) shown as ``\\x1b``; newlines and tabs kept. Events, dead letters and task names are
    anyone's input."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _cell(value: object) -> Any:
    """A table cell of ``value`` as plain text: control characters shown, ``[markup]`` not interpreted."""
    from rich.text import Text

    return Text("" if value is None else _safe(value))


@main.group(invoke_without_command=True)
@click.option("-n", "--tasks", "count", default=60, show_default=True, help="How many prompts to send.")
@click.option("--users", default=12, show_default=True, help="Distinct user keys.")
@click.pass_context
def demo(ctx: click.Context, count: int, users: int) -> None:
    """Run a small GenAI-flavoured workload on the embedded broker (no server needed)."""
    if ctx.invoked_subcommand is not None:
        return
    from taskq.demo import run_demo

    try:
        run_demo(count, users)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


@demo.command("agents")
@click.option("--request", "text", show_default=True,
              default="research how Kafka consumer groups rebalance; code a lag checker; review the lag checker",
              help="What to ask the agents.")
@click.option("-A", "--app", "app_path", default="tasks.app", show_default=True, help="The app with the agents.")
def demo_agents(text: str, app_path: str) -> None:
    """The planner, research/coder/reviewer agents and a chord, with a live view of the task tree."""
    from taskq.demo_agents import run_agents_demo

    try:
        run_agents_demo(text, app_path)
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@APP_OPTION
@click.option("--by", type=click.Choice(["user", "task", "root"]), default="user", show_default=True,
              help="Roll up per user key, task name or root task of a chain/chord.")
@click.option("--since", default=None, help="30m, 2h, 7d or an ISO date (UTC); whole hours. Default: all kept.")
@click.option("--limit", default=50, show_default=True, help="Rows shown (highest cost first).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def usage(app_path: str, by: str, since: str | None, limit: int, as_json: bool) -> None:
    """Tokens, cost and latency of LLM tasks, per user, task or root."""
    import json

    from taskq.llm.usage import parse_since, usage_store

    app = _app(app_path)
    try:
        rows = [r.as_dict() for r in usage_store(app).totals(by, parse_since(since))][:limit]
    except TaskqError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LLM usage by {by}" + (f" since {since}" if since else ""))
    for column in (by, "requests", "input tokens", "output tokens", "cost $", "mean latency s"):
        table.add_column(column, justify="left" if column == by else "right")
    for r in rows:
        table.add_row(_cell(r["name"]), str(r["requests"]), str(r["input_tokens"]), str(r["output_tokens"]),
                      f"{r['cost']:.6f}", f"{r['latency']:.3f}")
    Console().print(table)


@main.command("llm-guard")
@APP_OPTION
@click.option("--task", "task_name", default="tasks.llm.infer", show_default=True, help="The inference task.")
@click.option("--window", default=60.0, show_default=True, help="Tumbling window length in seconds.")
@click.option("--threshold", default=100, show_default=True, help="Requests per user and window allowed.")
@click.option("--block", "block_for", default=300.0, show_default=True, help="Seconds a violator is blocked.")
def llm_guard(app_path: str, task_name: str, window: float, threshold: int, block_for: float) -> None:
    """Count requests per user in tumbling windows; publish and block users over the threshold."""
    import threading

    from taskq.llm.guard import Guard, Limits
    from taskq.llm.violations import ViolationBlocker, ViolationCounter

    app = _app(app_path)
    try:
        task = app.get_task(task_name)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counter = ViolationCounter(app, task, window, threshold)
    blocker = ViolationBlocker(app, Guard(app, Limits()), block_for)
    threads = [threading.Thread(target=job.run, args=(stop,), name=name, daemon=True)
               for name, job in (("violation-counter", counter), ("violation-blocker", blocker))]
    for t in threads:
        t.start()
    click.echo(f"counting {task.topic} in {window:g} s windows; over {threshold} -> {counter.topic}; "
               f"blocking {block_for:g} s", err=True)
    while not stop.is_set() and all(t.is_alive() for t in threads):
        stop.wait(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    app.close()


@main.command("llm-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8765, show_default=True, help="TCP port.")
@click.option("--latency", default=0.0, show_default=True, help="Seconds before the first byte of an answer.")
@click.option("--tokens-per-second", default=0.0, show_default=True, help="Streaming speed (0: no delay).")
def llm_server(host: str, port: int, latency: float, tokens_per_second: float) -> None:
    """Serve a local stand-in for Anthropic's Messages API (point ANTHROPIC_BASE_URL at it)."""
    try:
        from taskq.devtools.llm_server import serve
    except ImportError as exc:
        raise click.ClickException(f"{exc}; install the extra: pip install 'taskq[llm]'") from exc
    click.echo(f"Messages API stand-in on http://{host}:{port} (faults: see taskq/devtools/llm_server.py)", err=True)
    serve(host, port, latency, tokens_per_second)


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmarks on real services: enqueue|e2e|latency|llm|soak (from a taskq checkout)."""
    _bench_commands().main(list(args), prog_name="taskq bench")


def _bench_commands() -> click.Group:
    """``benchmarks/bench.py`` of the checkout this package runs from; it is not in the wheel."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "bench.py").is_file():
        raise click.ClickException("taskq bench runs from a source checkout of taskq (benchmarks/ is not "
                                   "installed with the package): clone the repository, pip install -e . there, "
                                   "and run taskq bench again")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.bench import bench as commands

    return commands


for _command in CONTROL_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
