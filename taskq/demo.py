"""``taskq demo``: prompts from several users through a worker on the embedded broker.

The demo has its own small app (one ``infer`` task on the anthropic SDK, answered by the local
Messages API stand-in unless a key or base URL is set), so the library never imports the example
application in ``tasks/``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from taskq.app import Taskq
from taskq.config import redact_url
from taskq.errors import ConfigError
from taskq.task import Task
from taskq.worker import Worker

PROMPTS = ["Summarise the release notes", "Draft a reply to the customer", "Explain consumer lag",
           "Write a haiku about partitions", "List three risks of the plan", "Translate the greeting"]
MODEL = "claude-sonnet-4-6"


def make_app() -> tuple[Taskq, Task]:
    """The demo app on the embedded broker (``~/.taskq/demo.db``) and its ``infer`` task (needs ``taskq[llm]``)."""
    try:
        from taskq.llm import LLM, complete
    except ImportError as exc:
        raise ConfigError(f"the demo needs the llm extra ({exc}): pip install 'taskq[llm]'") from exc

    app = Taskq("demo")
    llm = LLM(app)

    @app.task(name="taskq.demo.infer", key="user_id", bind=True, max_retries=5, retry_backoff=True,
              retry_backoff_max=60.0)
    async def infer(self: Any, prompt: str, user_id: str = "anonymous", max_tokens: int = 256) -> dict[str, Any]:
        """Answer ``prompt`` for ``user_id``, streaming tokens as partial results."""
        return await complete(self, llm, prompt, model=MODEL, user_id=user_id, max_tokens=max_tokens)

    llm.install(infer)
    return app, infer


def run_demo(count: int, users: int) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from taskq.llm.client import API_KEY, BASE_URL, SDK_BASE_URL

    app, infer = make_app()
    console = Console()
    console.print(f"[bold]taskq demo[/]: {count} prompts from {users} users on {redact_url(app.broker_url)}")
    server = None
    if not (os.environ.get(API_KEY) or os.environ.get(BASE_URL) or os.environ.get(SDK_BASE_URL)):
        from taskq.devtools.llm_server import LLMServer

        server = LLMServer(latency=0.2, tokens_per_second=200).start()
        os.environ[BASE_URL] = server.url
        console.print(f"no {API_KEY} or {BASE_URL}: using the local Messages API stand-in at {server.url}")
    app.run_startup_checks()
    worker = Worker(app, [infer.name], concurrency=100, pool="asyncio", batch_size=100)
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
    if server is not None:
        server.stop()
    if count > 20:
        console.print(f"... and {count - 20} more; every one SUCCESS: "
                      f"{all(r[3] is not None and r[3].status == 'SUCCESS' for r in rows)}")
    app.close()
