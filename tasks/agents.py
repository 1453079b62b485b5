"""Multi-agent orchestration on the canvas.

::

    plan(request) ──replaced by──► chord([research(...), coder(...), reviewer(...), ...], gather)
                                                                          │
                       final answer: the root (plan) task's result, and a message on "agent-results"

The planner asks the model to break a request into typed subtasks and sends one agent task per
subtask; a chord gathers the agents' outputs, in plan order, into the final answer. Each agent is a
plain task on its own topic (run it in its own consumer group with a worker profile, see
``PROFILES``); agents know nothing of each other, only of the model they call.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from taskq import Task
from taskq.canvas import chord
from taskq.serialization import JSON
from tasks.app import app
from tasks.llm import DEFAULT_MODEL, TransientLLMError, _anthropic_client, fake_completion

RESULTS_TOPIC = "agent-results"  # after the app's topic prefix
KINDS = ("research", "code", "review")
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


@dataclass(frozen=True)
class Subtask:
    kind: str  # one of KINDS
    instruction: str


def ask_model(system: str, prompt: str, user_id: str, max_tokens: int = 512) -> dict[str, Any]:
    """One Messages API call (the anthropic SDK, e.g. against the stand-in), or the local fake model."""
    client = _anthropic_client()
    if client is None:
        words = fake_completion(f"{system}\n{prompt}", max_tokens)
        return {"text": " ".join(words), "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(words)},
                "model": "local-stand-in"}
    import anthropic

    try:
        message = client.messages.create(model=DEFAULT_MODEL, max_tokens=max_tokens, system=system,
                                         messages=[{"role": "user", "content": prompt}],
                                         metadata={"user_id": user_id})
    except (anthropic.RateLimitError, anthropic.InternalServerError, anthropic.APIConnectionError) as exc:
        raise TransientLLMError(str(exc)) from exc
    text = "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
    return {"text": text, "model": message.model,
            "usage": {"input_tokens": message.usage.input_tokens, "output_tokens": message.usage.output_tokens}}


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


def _agent(kind: str, instruction: str, request: str, user_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    prompt = f"Request: {request}\nYour part: {instruction}"
    reply = ask_model(SYSTEMS[kind], prompt, user_id)
    return {"agent": kind, "instruction": instruction, "output": reply["text"], "model": reply["model"],
            "usage": reply["usage"], "seconds": round(time.perf_counter() - started, 3)}


AGENT_OPTIONS: dict[str, Any] = {"key": "user_id", "autoretry_for": (TransientLLMError,), "max_retries": 3,
                                 "retry_backoff": True}


@app.task(name="tasks.agents.research", **AGENT_OPTIONS)
def research(instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The research agent."""
    return _agent("research", instruction, request, user_id)


@app.task(name="tasks.agents.coder", **AGENT_OPTIONS)
def coder(instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The coder agent."""
    return _agent("code", instruction, request, user_id)


@app.task(name="tasks.agents.reviewer", **AGENT_OPTIONS)
def reviewer(instruction: str, request: str, user_id: str) -> dict[str, Any]:
    """The reviewer agent."""
    return _agent("review", instruction, request, user_id)


AGENTS: dict[str, Task] = {"research": research, "code": coder, "review": reviewer}


@app.task(name="tasks.agents.plan", bind=True, key="user_id", autoretry_for=(TransientLLMError,), max_retries=3,
          retry_backoff=True)
def plan(self: Task, request: str, user_id: str = "anon") -> None:
    """The planner: ask the model for subtasks, then replace itself by the agents' chord.

    The final answer becomes this task's result (``plan.delay(...).get()``).
    """
    reply = ask_model(PLANNER_SYSTEM, request, user_id, max_tokens=256)
    subtasks = parse_plan(reply["text"])
    source = "model"
    if not subtasks:
        subtasks, source = plan_from_request(request), "request"
    header = [AGENTS[s.kind].s(s.instruction, request=request, user_id=user_id) for s in subtasks]
    raise self.replace(chord(header, gather.s(request=request, user_id=user_id,
                                             plan=[asdict(s) for s in subtasks], plan_source=source)))


@app.task(name="tasks.agents.gather", bind=True, autoretry_for=(TransientLLMError,), max_retries=3,
          retry_backoff=True)
def gather(self: Task, outputs: list[dict[str, Any]], request: str, user_id: str, plan: list[dict[str, str]],
           plan_source: str) -> dict[str, Any]:
    """The chord body: one answer from every agent's output (kept verbatim, in plan order).

    Published to ``<prefix>agent-results`` keyed by the root task id (at least once: a consumer that
    must not see one twice keeps the last per key) and stored as the root task's result.
    """
    parts = "\n\n".join(f"[{o['agent']}] {o['instruction']}\n{o['output']}" for o in outputs)
    summary = ask_model(SYSTEMS["gather"], f"Request: {request}\n\n{parts}", user_id)
    root = self.request.root
    final = {"root_id": root, "request": request, "user_id": user_id, "plan": plan, "plan_source": plan_source,
             "summary": summary["text"], "outputs": outputs,
             "answer": f"{summary['text']}\n\n{parts}"}
    topic = app.settings.topic_prefix + RESULTS_TOPIC
    app.ensure_topic(topic, 1)
    app.producer.produce(topic, root.encode(), JSON.dumps(final), [("task", b"tasks.agents.gather")])
    app.flush()
    return final


#: worker profiles: each agent pool consumes its own topic in its own consumer group
#: (``TASKQ_GROUP=<group> taskq worker -A tasks.app -Q <tasks...> -c <concurrency>``)
PROFILES: dict[str, dict[str, Any]] = {
    "planner": {"tasks": [plan.name, gather.name], "group": "agents.planner", "concurrency": 4},
    "research": {"tasks": [research.name], "group": "agents.research", "concurrency": 8},
    "coder": {"tasks": [coder.name], "group": "agents.coder", "concurrency": 8},
    "reviewer": {"tasks": [reviewer.name], "group": "agents.reviewer", "concurrency": 8},
}
