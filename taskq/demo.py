"""``taskq demo``: prompts from several users through a worker on the embedded broker."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from taskq.worker import Worker

PROMPTS = ["Summarise the release notes", "Draft a reply to the customer", "Explain consumer lag",
           "Write a haiku about partitions", "List three risks of the plan", "Translate the greeting"]


def run_demo(count: int, users: int) -> None:
    from tasks.app import app
    from tasks.llm import infer

    console = Console()
    console.print(f"[bold]taskq demo[/]: {count} prompts from {users} users on {app.broker_url}")
    worker = Worker(app, [infer.name], concurrency=8, batch_size=100)
    thread = threading.Thread(target=worker.run, name="taskq-demo-worker", daemon=True)
    thread.start()
    started = time.perf_counter()
    sent = [(f"user-{i % users}", f"{PROMPTS[i % len(PROMPTS)]} (#{i})") for i in range(count)]
    results = [(user, prompt, infer.delay(prompt, user_id=user)) for user, prompt in sent]
    app.flush()
    rows = []
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("running", total=count)
        for user, prompt, result in results:
            value = result.get(timeout=60)
            rows.append((user, prompt, value, result.record))
            progress.advance(bar)
    elapsed = time.perf_counter() - started
    worker.stop()
    thread.join(timeout=30)
    table = Table(title=f"{count} tasks in {elapsed:.2f} s ({count / elapsed:.0f}/s)")
    for column in ("user", "prompt", "answer", "tokens", "attempts", "worker"):
        table.add_column(column)
    for user, prompt, value, record in rows[:20]:
        table.add_row(user, prompt, value["text"][:48], str(value["usage"]["output_tokens"]),
                      str(record.attempts if record else "?"), record.worker if record else "?")
    console.print(table)
    if count > 20:
        console.print(f"... and {count - 20} more; every one SUCCESS: "
                      f"{all(r[3] is not None and r[3].status == 'SUCCESS' for r in rows)}")
    app.close()
