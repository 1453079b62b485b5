"""The HTML pages: overview, tasks, task detail, workers, topics, dead letters.

Pages are rendered on the server (Jinja2); ``static/live.js`` listens to ``/api/events`` and re-fetches
the page's ``#main`` fragment (``?partial=1``) when something changed, so views stay live.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from taskq.monitor.api import letter_dict, letters_of, replay_letters, task_filter
from taskq.monitor.core import Monitor
from taskq.monitor.state import STATES, tree
from taskq.monitor.svg import line_chart
from taskq.monitor.topics import waiting as waiting_in_partition
from taskq.errors import TaskqError

TEMPLATES = Path(__file__).parent / "templates"
PAGE = 100  # rows a page shows (tasks, dead letters)


def _ts(value: float | None) -> str:
    if not value:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (an event's wild timestamp)
        return str(value)


def _secs(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _local_time(text: str | None) -> float | None:
    """``datetime-local`` input (``2026-11-25T19:30``) -> epoch seconds."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise HTTPException(422, f"bad time {text!r}: use YYYY-MM-DDTHH:MM") from None


@functools.cache
def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["ts"] = _ts
    templates.env.filters["secs"] = _secs
    # tojson: arguments and results as written (it still escapes <, >, & and ' for HTML)
    templates.env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return templates


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    """An error (a task or dead letter that is gone, a bad filter, a mistyped address) as a page with the menu."""
    return _templates().TemplateResponse(request, "error.html", {"partial": False, "page": "error", "status": status,
                                                                 "detail": detail}, status_code=status)


def router(monitor: Monitor) -> APIRouter:
    pages = APIRouter(include_in_schema=False)
    templates = _templates()

    def render(request: Request, name: str, **context: Any) -> HTMLResponse:
        partial = request.query_params.get("partial") == "1"
        context.update(partial=partial, now=time.time(), alerts=monitor.lag_alerts(), health=monitor.health(),
                       page=name.removesuffix(".html"), states=STATES)
        return templates.TemplateResponse(request, name, context)

    @pages.get("/", response_class=HTMLResponse)
    def overview(request: Request, window: int = 600) -> HTMLResponse:
        window = max(60, min(window, 3600))
        bucket = max(1, window // 60)
        xs, by_state = monitor.state.throughput(window, bucket)
        rates = {s: [c / bucket for c in counts] for s, counts in by_state.items()}
        since = time.time() - window
        samples = [(t, v) for t, v in monitor.sampler.history if t >= since]
        lag_chart = line_chart([t for t, _ in samples],
                               {"lag": [v for _, v in samples],
                                "threshold": [monitor.config.lag_threshold] * len(samples)},
                               "Consumer lag (task topics, all partitions)", dashed=("threshold",))
        now = time.time()
        workers = monitor.state.workers()
        return render(request, "overview.html", window=window,
                      throughput_chart=line_chart(xs, rates, f"Tasks per second by state ({bucket} s buckets)", "/s"),
                      lag_chart=lag_chart, workers=workers, alive=[w for w in workers if w.alive(now)],
                      counts=monitor.state.states(), group_lag=monitor.sampler.group_lag(),
                      threshold=monitor.config.lag_threshold)

    @pages.get("/tasks", response_class=HTMLResponse)
    def tasks(request: Request, name: str = "", state: str = "", key: str = "", since: str = "",
              until: str = "", id: str = "", topic: str = "", partition: str = "",
              waiting: str = "", root_id: str = "", worker: str = "", page: int = 0) -> Response:
        waiting_ = waiting
        if id:
            found = monitor.state.task(id.strip())
            if found is not None or monitor.app.backend.get(id.strip()) is not None:
                return RedirectResponse(f"/tasks/{id.strip()}", 303)
        part = int(partition) if partition.isdigit() else None
        flt = task_filter(monitor, name, state, key, _local_time(since), _local_time(until), topic, part,
                          bool(waiting_), root_id, worker)
        page = max(0, page)
        total, shown = monitor.state.tasks(flt, PAGE, page * PAGE)
        query = {k: v for k, v in request.query_params.items() if k not in ("page", "partial")}
        queued, unreadable = [], None
        if waiting_ and topic and part is not None:
            try:
                queued = waiting_in_partition(monitor.app, topic, part)
            except TaskqError as exc:  # an unknown topic (a link from an old task, an edited URL), the broker down
                unreadable = str(exc)
        return render(request, "tasks.html", tasks=shown, total=total, q=query, names=monitor.state.task_names(),
                      page_no=page, missing_id=id if id else None, queued=queued, unreadable=unreadable)

    @pages.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_detail(request: Request, task_id: str) -> HTMLResponse:
        view = monitor.state.task(task_id)
        record = monitor.app.backend.get(task_id)
        if view is None and record is None:
            raise HTTPException(404, f"no task {task_id!r} in the events kept or the result backend")
        root = view.root_id if view and view.root_id else task_id
        family = tree(monitor.state.family(root), root)
        return render(request, "task.html", task=view, task_id=task_id, record=record, tree=family)

    @pages.get("/workers", response_class=HTMLResponse)
    def workers(request: Request) -> HTMLResponse:
        return render(request, "workers.html", workers=monitor.state.workers())

    @pages.get("/topics", response_class=HTMLResponse)
    def topics(request: Request) -> HTMLResponse:
        return render(request, "topics.html", topics=monitor.sampler.topics, sampled_at=monitor.sampler.sampled_at)

    @pages.get("/dead-letters", response_class=HTMLResponse)
    def dead_letter_topics(request: Request) -> HTMLResponse:
        topics = [t for t in monitor.sampler.topics if t.kind == "dead-letter"]
        return render(request, "dead_letters.html", topics=topics, prefix=monitor.app.settings.topic_prefix)

    @pages.get("/dead-letters/{task}", response_class=HTMLResponse)
    def dead_letter_list(request: Request, task: str, replayed: str = "", page: int = 0) -> HTMLResponse:
        found = letters_of(monitor, task)
        page = max(0, page)
        letters = [letter_dict(d) for d in found[page * PAGE:(page + 1) * PAGE]]
        return render(request, "dead_letter_list.html", task=task, letters=letters, total=len(found),
                      tasks=len({d.id for d in found}), page_no=page,
                      per_page=PAGE, replayed=[i for i in replayed.split(",") if i])

    @pages.post("/dead-letters/{task}/replay")
    def dead_letter_replay(task: str, id: str = Form(""), all: str = Form("")) -> Response:
        done = replay_letters(monitor, task, [id] if id else [], bool(all))
        return RedirectResponse(f"/dead-letters/{task}?replayed={','.join(done)}", 303)

    return pages
