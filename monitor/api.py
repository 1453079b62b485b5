"""The REST API under ``/api``: submit, results, partial-result streams, tasks, workers, lag, dead letters.

Errors are 4xx with a ``detail`` that says what to do: 404 for unknown tasks, ids and dead letters,
422 for arguments that do not fit the task's signature; 503 only when the broker or backend is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from taskq.monitor.core import Monitor
from taskq.monitor.live import sse
from taskq.monitor.state import STATES, TaskFilter, TaskView, tree
from taskq.monitor.topics import waiting as waiting_in_partition
from taskq.dlq import DeadLetter, dead_letters, replay
from taskq.errors import ConfigError, NotRegistered, TaskqError
from taskq.topics import dlq_origin, dlq_topic

JsonValue = Any


class SubmitRequest(BaseModel):
    task: str = Field(description="Registered task name, e.g. tasks.llm.infer", max_length=249)
    args: list[JsonValue] = Field(default_factory=list)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    key: str | None = Field(default=None, description="Message key (ordering); default: the task's key rule")
    countdown: float | None = Field(default=None, ge=0, le=86400 * 30, description="Run after this many seconds")


class Submitted(BaseModel):
    id: str
    task: str
    topic: str


class ReplayRequest(BaseModel):
    ids: list[str] = Field(default_factory=list, description="Dead-letter ids to replay")
    all: bool = Field(default=False, description="Replay every dead letter of the task")


class Replayed(BaseModel):
    replayed: list[str]


def router(monitor: Monitor) -> APIRouter:
    api = APIRouter(prefix="/api")
    app = monitor.app

    def backend_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except TaskqError as exc:
            raise HTTPException(503, f"result backend unavailable: {exc}") from exc

    @api.get("/health", summary="Monitor status: events read, tasks kept, errors")
    def health() -> dict[str, Any]:
        return monitor.health()

    @api.get("/tasks", summary="Tasks seen in events, newest first, filtered")
    def list_tasks(
        name: str | None = None,
        state: Annotated[str | None, Query(description=f"One of {', '.join(STATES)}")] = None,
        key: str | None = None,
        since: Annotated[float | None, Query(description="Epoch seconds")] = None,
        until: Annotated[float | None, Query(description="Epoch seconds")] = None,
        topic: str | None = None,
        partition: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
        waiting: Annotated[bool, Query(description="Only tasks at or past the group's committed offset")] = False,
        root_id: str | None = None,
        worker: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        if state is not None and state.upper() not in STATES:
            raise HTTPException(422, f"unknown state {state!r}: use one of {', '.join(STATES)}")
        flt = task_filter(monitor, name, state, key, since, until, topic, partition, waiting, root_id, worker)
        total, tasks = monitor.state.tasks(flt, limit, offset)
        return {"total": total, "tasks": [t.as_dict() for t in tasks]}

    @api.post("/tasks", status_code=202, response_model=Submitted, summary="Submit a task",
              responses={404: {"description": "Unknown task"}, 422: {"description": "Bad arguments"}})
    def submit(body: SubmitRequest) -> Submitted:
        try:
            task = app.get_task(body.task)
        except NotRegistered as exc:
            raise HTTPException(404, f"{exc}; known tasks: {', '.join(sorted(app.tasks)) or 'none'}") from None
        try:
            result = task.apply_async(body.args, body.kwargs, key=body.key, countdown=body.countdown)
            app.flush()
        except (ConfigError, TypeError) as exc:  # TypeError: the arguments do not fit the task's signature
            raise HTTPException(422, str(exc)) from exc
        except TaskqError as exc:
            raise HTTPException(503, f"broker unavailable: {exc}") from exc
        return Submitted(id=result.id, task=task.name, topic=task.topic)

    @api.get("/tasks/{task_id}", summary="One task: events, stored result, its tree",
             responses={404: {"description": "Unknown task id"}})
    def get_task(task_id: str) -> dict[str, Any]:
        view = monitor.state.task(task_id)
        record = backend_call(app.backend.get, task_id)
        if view is None and record is None:
            raise HTTPException(404, f"no task {task_id!r}: not in the events kept nor in the result backend")
        root = view.root_id if view and view.root_id else task_id
        return {"task": view.as_dict() if view else None, "result": _record(record),
                "tree": _tree_dict(tree(monitor.state.family(root), root))}

    @api.get("/tasks/{task_id}/result", summary="The stored result (value or error and traceback)",
             responses={404: {"description": "No result stored for this id"}})
    def get_result(task_id: str) -> dict[str, Any]:
        record = backend_call(app.backend.get, task_id)
        if record is None:
            known = monitor.state.task(task_id)
            state = known.state if known else None
            raise HTTPException(404, f"no result stored for {task_id!r}" +
                                (f" yet (task is {state})" if state else ": unknown task id"))
        return _record(record) or {}

    @api.get("/tasks/{task_id}/stream", summary="Partial results as server-sent events, then the final state",
             response_class=StreamingResponse)
    def stream(task_id: str, timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0) -> StreamingResponse:
        def frames() -> Iterator[bytes]:
            try:
                for chunk in app.backend.stream(task_id, timeout):
                    yield sse(chunk, "chunk")
                record = app.backend.get(task_id)
            except TaskqError as exc:
                yield sse({"error": str(exc)}, "error")
                return
            yield sse({"id": task_id, "status": record.status if record else "PENDING"}, "done")
        return StreamingResponse(frames(), media_type="text/event-stream")

    @api.get("/workers", summary="Workers from their heartbeats")
    def workers() -> list[dict[str, Any]]:
        now = time.time()
        return [w.as_dict(now) for w in monitor.state.workers()]

    @api.get("/lag", summary="Consumer lag per group and partition, with alerts over the threshold")
    def lag(fresh: bool = False) -> dict[str, Any]:
        topics = monitor.sampler.sample() if fresh else monitor.sampler.topics
        return {"sampled_at": monitor.sampler.sampled_at, "threshold": monitor.config.lag_threshold,
                "groups": monitor.sampler.group_lag(), "alerts": monitor.lag_alerts(),
                "partitions": [{"group": t.group, "topic": t.name, "partition": p.partition, "end": p.high,
                                "committed": p.committed, "lag": p.lag}
                               for t in topics if t.group for p in t.partitions]}

    @api.get("/topics", summary="Topics with partitions, leaders, offsets and lag")
    def topics() -> list[dict[str, Any]]:
        return [t.as_dict() for t in monitor.sampler.topics]

    @api.get("/topics/{topic}/partitions/{partition}/waiting", summary="Tasks waiting in a partition",
             responses={404: {"description": "Unknown topic or partition"}})
    def waiting_in(topic: str, partition: int, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        known = next((t for t in monitor.sampler.topics if t.name == topic), None)
        if known is None or partition not in {p.partition for p in known.partitions}:
            raise HTTPException(404, f"unknown topic or partition {topic}[{partition}]: see /api/topics")
        try:
            return {"topic": topic, "partition": partition, "tasks": waiting_in_partition(app, topic, partition, limit)}
        except TaskqError as exc:
            raise HTTPException(503, f"broker unavailable: {exc}") from exc

    @api.get("/dead-letters", summary="Dead-letter topics and how many letters each holds")
    def dlq_topics() -> list[dict[str, Any]]:
        return [{"topic": t.name, "task": dlq_origin(t.name).removeprefix(app.settings.topic_prefix),
                 "letters": t.messages} for t in monitor.sampler.topics if t.kind == "dead-letter"]

    @api.get("/dead-letters/{task}", summary="Dead letters of a task, oldest first",
             responses={404: {"description": "Unknown"}})
    def dlq_list(task: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 offset: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
        return [letter_dict(d) for d in letters_of(monitor, task)[offset:offset + limit]]

    @api.post("/dead-letters/{task}/replay", response_model=Replayed, summary="Replay dead letters",
              responses={404: {"description": "Unknown task or id"}, 422: {"description": "Nothing chosen"}})
    def dlq_replay(task: str, body: ReplayRequest) -> Replayed:
        return Replayed(replayed=replay_letters(monitor, task, body.ids, body.all))

    @api.get("/events", summary="Live task and worker events (server-sent events)",
             response_class=StreamingResponse)
    async def events(request: Request) -> StreamingResponse:
        queue = monitor.live.subscribe()

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield sse(event, "event")
            finally:
                monitor.live.unsubscribe(queue)
        return StreamingResponse(frames(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


def task_filter(monitor: Monitor, name: str | None, state: str | None, key: str | None, since: float | None,
                until: float | None, topic: str | None, partition: int | None, waiting: bool,
                root_id: str | None, worker: str | None) -> TaskFilter:
    """The filter, with ``waiting`` turned into the partition's committed offset."""
    min_offset = None
    if waiting and topic is not None and partition is not None:
        for t in monitor.sampler.topics:
            if t.name == topic:
                for p in t.partitions:
                    if p.partition == partition:
                        min_offset = p.committed if p.committed is not None else p.low
    return TaskFilter(name or None, state or None, key or None, since, until, topic or None, partition,
                      min_offset, root_id or None, worker or None)


def letters_of(monitor: Monitor, task: str) -> list[DeadLetter]:
    """Dead letters of a registered task or of an existing ``*.dlq`` topic; 404 otherwise."""
    app = monitor.app
    known = task in app.tasks or any(t.name in (task, dlq_topic(task), dlq_topic(app.settings.topic_prefix + task))
                                     for t in monitor.sampler.topics if t.kind == "dead-letter")
    if not known:
        raise HTTPException(404, f"unknown task {task!r}: give a registered task name or a dead-letter topic")
    try:
        return dead_letters(app, dlq_origin(task))
    except ConfigError as exc:
        raise HTTPException(404, str(exc)) from exc
    except TaskqError as exc:
        raise HTTPException(503, f"broker unavailable: {exc}") from exc


def replay_letters(monitor: Monitor, task: str, ids: list[str], everything: bool) -> list[str]:
    if not ids and not everything:
        raise HTTPException(422, "name the dead letters in 'ids' or set 'all': true")
    letters = [d for d in letters_of(monitor, task) if everything or d.id in ids]
    missing = set(ids) - {d.id for d in letters}
    if missing:
        raise HTTPException(404, f"no dead letter(s) {sorted(missing)} for {task}")
    try:
        return [d.id for d in replay(monitor.app, letters)]
    except TaskqError as exc:
        raise HTTPException(503, f"replay failed: {exc}") from exc


def letter_dict(d: DeadLetter) -> dict[str, Any]:
    r = d.record
    return {"id": d.id, "task": d.task, "reason": d.reason, "error": d.error, "traceback": d.traceback,
            "attempts": d.attempts, "dead_at": d.dead_at, "original_topic": d.original_topic,
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "key": (r.key or b"").decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in r.headers},
            "value": (r.value or b"").decode(errors="replace")[:4000]}


def _record(record: Any) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"id": record.id, "status": record.status, "result": record.result, "error": record.error,
            "traceback": record.traceback, "task": record.task, "worker": record.worker,
            "attempts": record.attempts, "date_done": record.date_done, "meta": record.meta}


def _tree_dict(node: dict[str, Any]) -> dict[str, Any]:
    t: TaskView | None = node["task"]
    return {"id": node["id"], "task": t.task if t else None, "state": t.state if t else None,
            "children": [_tree_dict(c) for c in node["children"]]}
