"""The agents example end to end: real Kafka and Redis, the Messages API stand-in, one worker process
per agent pool, each pool in its own consumer group."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Taskq
from tests.support import WorkerProcess, env_for, fault_line, read_records, wait_until

REQUEST = ("research how Kafka rebalances consumer groups; code a lag checker for one group; "
           "review the lag checker")
POOLS = {"planner": ["tasks.agents.plan", "tasks.agents.gather"], "research": ["tasks.agents.research"],
         "coder": ["tasks.agents.coder"], "reviewer": ["tasks.agents.reviewer"]}
TIMEOUT = 90


class Agents:
    """Worker processes per pool, and a caller-side app with the example's task names."""

    def __init__(self, kafka_url: str, redis_url: str, llm_url: str, prefix: str) -> None:
        self.prefix = prefix
        self.env = {**env_for(kafka_url, redis_url, prefix), "TASKQ_LLM_BASE_URL": llm_url,
                    "TASKQ_DEFAULT_PARTITIONS": "2", "TASKQ_CONNECT_TIMEOUT": "30"}
        self.app = Taskq("tasks", broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.",
                         group=f"{prefix}.client", default_partitions=2, connect_timeout=30)

        def plan(request: str, user_id: str = "anonymous") -> None:
            raise AssertionError("runs in the planner pool only")

        self.plan = self.app.task(plan, name="tasks.agents.plan", key="user_id")
        self.workers: dict[str, WorkerProcess] = {}

    def start(self, pool: str, name: str | None = None) -> WorkerProcess:
        env = {**self.env, "TASKQ_GROUP": f"{self.prefix}.agents.{pool}"}
        queues = [a for task in POOLS[pool] for a in ("-Q", task)]
        worker = WorkerProcess("tasks.app", env, *queues, "-c", "4", name=name or pool)
        self.workers[name or pool] = worker
        return worker

    def start_all(self) -> None:
        for pool in POOLS:
            self.start(pool)
        for worker in self.workers.values():
            worker.wait_for("assigned", timeout=180)

    def final_messages(self, root: str) -> list[Any]:
        records = read_records(self.app, f"{self.prefix}.agent-results", 10, timeout=5)
        return [r for r in records if r.key == root.encode()]

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.app.close()


@pytest.fixture(scope="module")
def agents(kafka_url: str, redis_url: str, llm_server: Any) -> Iterator[Agents]:
    """One set of pools for the module (worker start-up is most of these tests' time)."""
    a = Agents(kafka_url, redis_url, llm_server.url, f"ag{uuid.uuid4().hex[:8]}")
    a.start_all()
    yield a
    a.stop()


def test_one_request_fans_out_to_the_agents_and_gathers_every_output(agents: Agents) -> None:
    root = agents.plan.delay(REQUEST, user_id="u1")
    final = root.get(timeout=TIMEOUT)
    assert final["root_id"] == root.id and final["plan_source"] == "request"
    assert [p["kind"] for p in final["plan"]] == ["research", "code", "review"]
    # the tree below the root: the chord, and below it one task per subtask and the gathering body
    (chord,) = root.children
    members = chord.children
    assert [m.record.task for m in members] == ["tasks.agents.research", "tasks.agents.coder",
                                               "tasks.agents.reviewer", "tasks.agents.gather"]
    assert all(m.record.root_id == root.id and m.record.parent_id == chord.id for m in members)
    outputs = [m.result for m in members[:3]]
    assert [o["agent"] for o in final["outputs"]] == ["research", "code", "review"]
    for output in outputs:  # every agent's output, verbatim, in the final answer
        assert output["output"] and output["output"] in final["answer"]
    assert members[3].id == root.id  # the gathering body stores its result under the root id
    # each agent ran in its own pool (consumer group)
    workers = {m.record.task: m.record.worker for m in members}
    assert workers["tasks.agents.coder"].startswith("coder") and workers["tasks.agents.research"].startswith(
        "research")
    (message,) = agents.final_messages(root.id)
    assert message.value is not None and b'"plan_source":"request"' in message.value


def test_the_models_plan_routes_each_subtask_to_its_agent(agents: Agents, llm_server: Any) -> None:
    request = f"prepare a lag report for the ops team ({agents.prefix})"
    llm_server.add_reply("Plan:\n1. research: how consumer lag is measured\n- code: a lag exporter\n"
                         "Reviewer: check the exporter\nThat is all.", match=request, times=1)  # the planner asks first
    root = agents.plan.delay(request, user_id="u3")
    final = root.get(timeout=TIMEOUT)
    assert final["plan_source"] == "model"
    assert final["plan"] == [{"kind": "research", "instruction": "how consumer lag is measured"},
                             {"kind": "code", "instruction": "a lag exporter"},
                             {"kind": "review", "instruction": "check the exporter"}]
    members = root.children[0].children
    assert [m.record.task for m in members] == ["tasks.agents.research", "tasks.agents.coder",
                                               "tasks.agents.reviewer", "tasks.agents.gather"]
    assert [(o["agent"], o["instruction"]) for o in final["outputs"]] == [
        (p["kind"], p["instruction"]) for p in final["plan"]]


def test_a_plan_of_many_lines_starts_at_most_max_subtasks_agents(agents: Agents, llm_server: Any) -> None:
    """A plan is model output: one of 20 lines used to start 20 agents (20 more model calls)."""
    from tasks.agents import MAX_SUBTASKS

    request = f"survey every broker metric ({agents.prefix})"
    lines = "\n".join(f"research: metric {i}" for i in range(20))
    llm_server.add_reply(lines, match=request, times=1)
    root = agents.plan.delay(request, user_id="u5")
    final = root.get(timeout=TIMEOUT)
    assert final["plan"] == [{"kind": "research", "instruction": f"metric {i}"} for i in range(MAX_SUBTASKS)]
    assert final["plan_dropped"] == 20 - MAX_SUBTASKS
    assert len(final["outputs"]) == MAX_SUBTASKS
    assert len(root.children[0].children) == MAX_SUBTASKS + 1  # the agents and the gather


def test_killing_an_agent_worker_mid_run_still_ends_with_one_final_result(agents: Agents, llm_server: Any) -> None:
    """The coder's model call stalls; its worker is killed (-9) meanwhile; a new coder worker in the
    same group re-runs the task after the session timeout, and the request ends with one answer."""
    llm_server.add_fault("stall", times=1, seconds=60, match="coder agent. Write the code asked for")
    before = len(llm_server.requests())
    root = agents.plan.delay(REQUEST + f" ({agents.prefix})", user_id="u2")
    wait_until(lambda: any(r.get("fault") == "stall" for r in llm_server.requests()[before:]), TIMEOUT,
               "the coder's model call to stall")
    agents.workers["coder"].kill()
    replacement = agents.start("coder", name="coder2")
    final = root.get(timeout=TIMEOUT)
    assert [o["agent"] for o in final["outputs"]] == ["research", "code", "review"]
    coder = next(m for m in root.children[0].children if m.record.task == "tasks.agents.coder")
    assert coder.record.worker.startswith("coder2")
    finals = agents.final_messages(root.id)
    fault_line("agent-worker-kill-9", 1, int(root.successful()), int(not root.successful()), len(finals) - 1,
               f"coder_runs={coder.record.attempts}")
    assert len(finals) == 1
    replacement.terminate()
