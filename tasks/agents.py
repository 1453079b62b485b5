"""Multi-agent orchestration on the canvas.

::

    plan(request) ──replaced by──► chord([research(...), coder(...), reviewer(...), ...], gather)
                                                                          │
                       final answer: the root (plan) task's result, and a message on "agent-results"

The planner asks the model to break a request into typed subtasks and sends one agent task per
subtask; a chord gathers the agents' outputs, in plan order, into the final answer. Each agent is a
plain task on its own topic; each pool runs in its own consumer group
(``taskq worker -A tasks.app --profile agents-coder``, ``workers/agents-*.toml``), so one agent's
backlog or outage never holds up another's. Agents know nothing of each other, only of the model they call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

from taskq import Task
from taskq.canvas import chord
from taskq.llm import complete
from taskq.serialization import JSON
from tasks.app import app
from tasks.llm import DEFAULT_MODEL, llm

log = logging.getLogger("tasks.agents")
RESULTS_TOPIC = "agent-results"  # after the app's topic prefix
KINDS = ("research", "code", "review")
MAX_SUBTASKS = 8  # agents one plan starts at most: a plan is model output, and 85 lines would be 85 model calls
PLANNER_SYSTEM = ("You are the planner agent. Break the user's request into subtasks, one per line, each as "
                  "'<kind>: <instruction>' where kind is research, code or review. No other text.")
SYSTEMS = {
    "research": "You are the research agent. Find and summarise what is known; cite what you rely on.",
    "code": "You are the coder agent. Write the code asked for, with a short explanation.",
    "review": "You are the reviewer agent. Review the work described: risks, mistakes, what to test.",
    "gather": "You are the editor agent. Combine the agents' outputs into one answer to the request.",
}
PLAN_LINE = re.compile(r"^\s*[-*\d.)\s]*(research|code|coder|review|reviewer)\s*:\s*(.+?)\s*$", re.IGNORECASE)
KIND_NAMES = {"research": "research", "code": "code", "coder": "code", "review": "review", "reviewer": "review"}
KEYWORDS = {  # for a plan read from the request itself, when the model's answer holds none
    "research": ("research", "find", "investigate", "explain", "compare", "summar", "look up"),
    "code": ("code", "write", "implement", "build", "script", "function", "program"),
    "review": ("review", "check", "audit", "critique", "test", "verify"),
}
#: agents retry provider failures (429/529/5xx, timeouts) through taskq, see taskq.llm
AGENT_OPTIONS: dict[str, Any] = {"key": "user_id", "bind": True, "max_retries": 5, "retry_backoff": True,
                                 "retry_backoff_max": 30.0, "time_limit": 300.0}


@dataclass(frozen=True)
class Subtask:
    kind: str  # one of KINDS
    instruction: str


async def ask_model(task: Task, system: str, prompt: str, user_id: str, max_tokens: int = 512) -> dict[str, Any]:
    """One Messages API call through the anthropic SDK (taskq.llm: tokens streamed, failures retried)."""
    return await complete(task, llm, prompt, model=DEFAULT_MODEL, user_id=user_id, max_tokens=max_tokens,
                          system=system)


def parse_plan(text: str) -> list[Subtask]:
    """Subtasks from the model's ``kind: instruction`` lines (other lines are ignored)."""
    subtasks = []
    for line in text.splitlines():
        match = PLAN_LINE.match(line)
        if match:
            subtasks.append(Subtask(KIND_NAMES[match.group(1).lower()], match.group(2)))
    return subtasks


def plan_from_request(request: str) -> list[Subtask]:
    """Subtasks read from the request's own clauses (``;``, new lines, "then"), typed by keywords.

    Used when the model's answer holds no plan (the stand-in model answers with filler text); a
    request naming no kind gets one subtask of each kind.
    """
    clauses = [c.strip(" .") for c in re.split(r";|\n|\bthen\b", request) if c.strip(" .")]
    subtasks = []
    for clause in clauses:
        lowered = clause.lower()
        kind = next((k for k, words in KEYWORDS.items() if any(lowered.startswith(w) or f" {w}" in lowered
                                                                for w in words)), None)
        if kind is not None:
            subtasks.append(Subtask(kind, clause))
    return subtasks or [Subtask(kind, request) for kind in KINDS]


async def _agent(task: Task, kind: str, instruction: str, request: str, user_id: str) -> dict[str, Any]:
    reply = await ask_model(task, SYSTEMS[kind], f"Request: {request}\nYour part: {instruction}", user_id)
    return {"agent": kind, "instruction": instruction, "output": reply["text"], "model": reply["model"],
            "usage": reply["usage"], "cost": reply["cost"], "latency": reply["latency"]}


@app.task(name="tasks.agents.research", **AGENT_OPTIONS)
async def research(self: Task, instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The research agent."""
    return await _agent(self, "research", instruction, request, user_id)


@app.task(name="tasks.agents.coder", **AGENT_OPTIONS)
async def coder(self: Task, instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The coder agent."""
    return await _agent(self, "code", instruction, request, user_id)


@app.task(name="tasks.agents.reviewer", **AGENT_OPTIONS)
async def reviewer(self: Task, instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The reviewer agent."""
    return await _agent(self, "review", instruction, request, user_id)


AGENTS: dict[str, Task] = {"research": research, "code": coder, "review": reviewer}


@app.task(name="tasks.agents.plan", **AGENT_OPTIONS)
async def plan(self: Task, request: str, user_id: str = "anonymous") -> None:
    """The planner: ask the model for subtasks, then replace itself by the agents' chord.

    The final answer becomes this task's result (``plan.delay(...).get()``).
    """
    reply = await ask_model(self, PLANNER_SYSTEM, request, user_id, max_tokens=256)
    subtasks = parse_plan(reply["text"])
    source = "model"
    if not subtasks:
        subtasks, source = plan_from_request(request), "request"
    dropped = max(0, len(subtasks) - MAX_SUBTASKS)
    if dropped:
        log.warning("plan %s: %d subtasks, the first %d run (MAX_SUBTASKS)", self.request.id, len(subtasks),
                    MAX_SUBTASKS)
        subtasks = subtasks[:MAX_SUBTASKS]
    header = [AGENTS[s.kind].s(s.instruction, request=request, user_id=user_id) for s in subtasks]
    raise self.replace(chord(header, gather.s(request=request, user_id=user_id, plan=[asdict(s) for s in subtasks],
                                             plan_source=source, plan_dropped=dropped)))


@app.task(name="tasks.agents.gather", **{**AGENT_OPTIONS, "key": None})
async def gather(self: Task, outputs: list[dict[str, Any]], request: str, user_id: str, plan: list[dict[str, str]],
           plan_source: str, plan_dropped: int = 0) -> dict[str, Any]:
    """The chord body: one answer from every agent's output (kept verbatim, in plan order).

    Published to ``<prefix>agent-results`` keyed by the root task id (at least once: a consumer that
    must not see one twice keeps the last per key) and stored as the root task's result.
    """
    parts = "\n\n".join(f"[{o['agent']}] {o['instruction']}\n{o['output']}" for o in outputs)
    summary = await ask_model(self, SYSTEMS["gather"], f"Request: {request}\n\n{parts}", user_id)
    root = self.request.root
    final = {"root_id": root, "request": request, "user_id": user_id, "plan": plan, "plan_source": plan_source,
             "plan_dropped": plan_dropped,
             "summary": summary["text"], "outputs": outputs,
             "answer": f"{summary['text']}\n\n{parts}"}
    topic = app.settings.topic_prefix + RESULTS_TOPIC
    await asyncio.to_thread(publish, topic, root, final)
    return final


def publish(topic: str, root: str, final: dict[str, Any]) -> None:
    """Produce the final answer and wait for the broker's acknowledgement."""
    app.ensure_topic(topic, 1)
    app.producer.produce(topic, root.encode(), JSON.dumps(final), [("root_id", root.encode())])
    app.flush()


llm.install(plan, research, coder, reviewer, gather)  # budgets and blocked users checked at send time
