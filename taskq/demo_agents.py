"""``taskq demo agents``: the multi-agent example (``tasks/agents.py``) on the embedded broker, with a
live view of the workflow tree (root, chord, one agent task per subtask, the gathering body).

The example app is loaded by name (``-A tasks.app``, from a checkout), like a worker loads it: the
library does not import it. The model is the local Messages API stand-in unless a key or base URL is set.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from taskq.app import Taskq, load_app
from taskq.config import redact_url
from taskq.errors import ConfigError
from taskq.result import AsyncResult
from taskq.worker import Worker

AGENT_TASKS = ("tasks.agents.plan", "tasks.agents.research", "tasks.agents.coder", "tasks.agents.reviewer",
               "tasks.agents.gather")
ROOT_LABEL = "tasks.agents.plan (replaced by the chord; its result is the gathered answer)"
STYLES = {"SUCCESS": "green", "FAILURE": "red", "RETRY": "yellow", "STARTED": "cyan", "PENDING": "dim"}


def workflow_tree(result: AsyncResult, label: str = "", seen: frozenset[str] = frozenset()) -> Any:
    """A rich Tree of ``result`` and everything it sent (``AsyncResult.children``, recursively).

    A task replaced by a workflow (the planner) shares its id with that workflow's last task: shown
    once more there, not expanded again."""
    from rich.tree import Tree

    record = result.record
    name = label or (record.task if record is not None and record.task else "workflow")
    status = result.status
    worker = f" [dim]on {record.worker}[/]" if record is not None and record.worker else ""
    node = Tree(f"[{STYLES.get(status, 'white')}]{status:<8}[/] {name} [dim]{result.id[:8]}[/]{worker}")
    if result.id in seen:
        return node
    for child in result.children:
        node.add(workflow_tree(child, seen=seen | {result.id}))
    return node


def run_agents_demo(request: str, app_path: str = "tasks.app", timeout: float = 120.0) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel

    from taskq.llm.client import API_KEY, BASE_URL, SDK_BASE_URL

    console = Console()
    server = None
    if not (os.environ.get(API_KEY) or os.environ.get(BASE_URL) or os.environ.get(SDK_BASE_URL)):
        from taskq.devtools.llm_server import LLMServer

        server = LLMServer(latency=0.3, tokens_per_second=300).start()
        os.environ[BASE_URL] = server.url
        console.print(f"no {API_KEY} or {BASE_URL}: using the local Messages API stand-in at {server.url}")
    try:
        app = load_app(app_path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; run `taskq demo agents` from a taskq checkout (it uses tasks/agents.py)") from exc
    missing = [t for t in AGENT_TASKS if t not in app.tasks]
    if missing:
        raise ConfigError(f"{app_path} has no agent tasks {missing}: run from a taskq checkout")
    app.run_startup_checks()
    console.print(f"[bold]taskq demo agents[/] on {redact_url(app.broker_url)}\nrequest: {request}")
    worker = Worker(app, list(AGENT_TASKS), concurrency=16, pool="asyncio", batch_size=100)
    thread = threading.Thread(target=worker.run, name="taskq-demo-agents", daemon=True)
    thread.start()
    try:
        _run(app, console, request, timeout, Live, Panel)
    finally:
        worker.stop()
        thread.join(30)
        if server is not None:
            server.stop()
        app.close()


def _run(app: Taskq, console: Any, request: str, timeout: float, live_type: Any, panel_type: Any) -> None:
    root = app.tasks["tasks.agents.plan"].delay(request, user_id="demo")
    app.flush()
    started = time.monotonic()
    with live_type(workflow_tree(root, ROOT_LABEL), console=console, refresh_per_second=8) as live:
        while not root.ready() and time.monotonic() - started < timeout:
            time.sleep(0.25)
            live.update(workflow_tree(root, ROOT_LABEL))
        live.update(workflow_tree(root, ROOT_LABEL))
    final = root.get(timeout=1)
    console.print(f"[bold]plan[/] ({final['plan_source']}): "
                  + "; ".join(f"{p['kind']}: {p['instruction']}" for p in final["plan"]))
    for output in final["outputs"]:
        console.print(panel_type(output["output"], title=f"{output['agent']}: {output['instruction']}"))
    console.print(panel_type(final["summary"], title="final answer (summary)"))
    console.print(f"done in {time.monotonic() - started:.1f} s; the answer is the root task's result "
                  f"({root.id}) and a message on {app.settings.topic_prefix}agent-results")
