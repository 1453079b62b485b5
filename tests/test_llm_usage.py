"""Tokens and cost roll-ups (Redis and the embedded store), ``taskq usage``, and daily budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("anthropic")

from taskq.devtools.llm_server import LLMServerClient  # noqa: E402
from taskq.errors import BudgetExceeded  # noqa: E402
from taskq.llm import Limits, LLMConfig  # noqa: E402
from taskq.llm.usage import LocalUsageStore, Usage, parse_since, usage_store  # noqa: E402
from tests.apps.llmapp import build  # noqa: E402
from tests.support import ROOT, worker_thread  # noqa: E402


def usage(user: str, task: str, root: str, tokens: tuple[int, int], cost: float, ts: float | None = None) -> Usage:
    return Usage(user, task, root, "claude-sonnet-4-6", tokens[0], tokens[1], cost, 0.5, ts or time.time())


SAMPLE = [usage("alice", "infer", "r1", (10, 20), 0.001), usage("alice", "summarise", "r1", (5, 5), 0.0005),
          usage("bob", "infer", "r2", (100, 200), 0.01), usage("bob", "infer", "r3", (1, 1), 0.0001,
                                                                ts=time.time() - 5 * 3600)]


def check_rollups(store: Any) -> None:
    by_user = {r.name: r for r in store.totals("user")}
    assert by_user["alice"].requests == 2 and by_user["alice"].input_tokens == 15
    assert by_user["alice"].output_tokens == 25 and by_user["alice"].cost == pytest.approx(0.0015)
    assert by_user["bob"].requests == 2 and by_user["bob"].latency == pytest.approx(0.5)
    assert [r.name for r in store.totals("user")] == ["bob", "alice"]  # highest cost first
    by_task = {r.name: r.requests for r in store.totals("task")}
    assert by_task == {"infer": 3, "summarise": 1}
    recent = {r.name: r.requests for r in store.totals("root", parse_since("2h"))}
    assert recent == {"r1": 2, "r2": 1}, "the call five hours ago is outside --since 2h"
    assert store.spent_today("alice")[0] == 40


@pytest.mark.redis
def test_redis_rollups_and_the_usage_command(redis_clean: str, kafka_url: str) -> None:
    app, _infer, _llm = build("llmapp", broker=kafka_url, backend=redis_clean)
    store = usage_store(app)
    store.add(SAMPLE)
    check_rollups(store)
    env = {**os.environ, "TASKQ_BROKER_URL": kafka_url, "TASKQ_RESULT_BACKEND": redis_clean, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "taskq.cli", "usage", "-A", "tests.apps.llmapp", "--by", "task",
                          "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["name"], r["requests"], r["tokens"]) for r in rows] == [("infer", 3, 332), ("summarise", 1, 10)]
    table = subprocess.run([sys.executable, "-m", "taskq.cli", "usage", "-A", "tests.apps.llmapp", "--by", "user",
                            "--since", "1h"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "alice" in table.stdout and "bob" in table.stdout, table.stderr


def test_local_rollups(tmp_path: Path) -> None:
    store = LocalUsageStore(str(tmp_path / "u.db"))
    store.add(SAMPLE)
    check_rollups(store)


@pytest.mark.kafka
@pytest.mark.redis
def test_budget_refuses_at_delay_and_in_the_worker(kafka_url: str, redis_clean: str, llm_server: LLMServerClient,
                                                   unique: str) -> None:
    app, infer, llm = build(f"bud{unique}", LLMConfig("k", llm_server.url), limits=Limits(daily_tokens=100),
                            broker=kafka_url, backend=redis_clean, topic_prefix=f"bud{unique}.",
                            group=f"bud{unique}.group")
    app.ensure_topics({infer.topic: 2, app.dlq_topic(infer.topic): 2})
    queued = infer.delay("queued while under budget", user_id="carol")
    usage_store(app).add([usage("carol", infer.name, "r", (60, 50), 0.001)])  # 110 tokens today
    with pytest.raises(BudgetExceeded, match="carol.*110 tokens.*100"):
        infer.delay("one more", user_id="carol")
    other = infer.delay("someone else", user_id="dave")
    with worker_thread(app, pool="asyncio", concurrency=10):
        with pytest.raises(BudgetExceeded, match="daily budget"):
            queued.get(timeout=60)
        assert queued.record.attempts == 1, "a spent budget is not retried"
        assert other.get(timeout=60)["text"]
    app.close()


@pytest.mark.kafka
@pytest.mark.redis
def test_worker_accounts_every_llm_task(kafka_url: str, redis_clean: str, llm_server: LLMServerClient,
                                        unique: str) -> None:
    app, infer, llm = build(f"acc{unique}", LLMConfig("k", llm_server.url), limits=Limits(), broker=kafka_url,
                            backend=redis_clean, topic_prefix=f"acc{unique}.", group=f"acc{unique}.group")
    app.ensure_topics({infer.topic: 2, app.dlq_topic(infer.topic): 2})
    results = [infer.apply_async((f"question {i} [[tokens=5]]",), {"user_id": f"user{i % 2}", "max_tokens": 5},
                                 root_id="root-a" if i < 3 else None) for i in range(6)]
    with worker_thread(app, pool="asyncio", concurrency=10):
        values = [r.get(timeout=60) for r in results]
        store = usage_store(app)
        deadline = time.monotonic() + 10  # the hook runs once results are stored
        while sum(r.requests for r in store.totals("task")) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    by_user = {r.name: r for r in store.totals("user")}
    assert {n: r.requests for n, r in by_user.items()} == {"user0": 3, "user1": 3}
    assert by_user["user0"].output_tokens == 15
    expected_cost = sum(v["cost"] for i, v in enumerate(values) if i % 2 == 0)
    assert by_user["user0"].cost == pytest.approx(expected_cost, abs=1e-6)
    assert {r.name: r.requests for r in store.totals("task")} == {infer.name: 6}
    roots = {r.name: r.requests for r in store.totals("root")}
    assert roots["root-a"] == 3 and sum(roots.values()) == 6
    app.close()


@pytest.mark.redis
def test_loop_writes_batch_chunks_and_usage_in_order(redis_clean: str) -> None:
    """Deltas of many calls go out in one batch per interval, merged per task, restart marks in their place;
    a flush returns only once chunks and usage are stored; a failed chunk write fails that task's flush."""
    import asyncio

    from taskq.llm.usage import RedisUsageStore
    from taskq.llm.writes import LoopWrites
    from taskq.results.base import RESTART_MARK, SUCCESS, ResultRecord
    from taskq.results.redis import RedisBackend

    backend = RedisBackend(redis_clean)
    store = RedisUsageStore(backend.client, "taskq-usage-test:")
    batches: list[int] = []
    real = backend.append_chunks

    def counted(items: Any) -> None:
        batches.append(len(items))
        real(items)

    backend.append_chunks = counted  # type: ignore[method-assign]

    async def run() -> None:
        writes = LoopWrites(asyncio.get_running_loop(), backend, lambda: store, interval=0.05)
        for i in range(100):
            for text in ("Hel", "lo"):
                writes.text(f"w{i}", text)
        writes.restart("w0")
        writes.text("w0", "again")
        await asyncio.sleep(0.2)  # the timer wrote them: one batch, one chunk per task (w0: 3 items)
        assert batches == [102]
        writes.text("w1", "!")
        writes.usage(usage("carol", "infer", "r9", (3, 4), 0.002))
        await writes.flush("w1")  # at once, not after the interval
        assert batches == [102, 1] and store.spent_today("carol")[0] == 7
        backend.append_chunks = lambda items: (_ for _ in ()).throw(RuntimeError("store down"))  # type: ignore
        writes.text("w2", "x")
        with pytest.raises(RuntimeError, match="store down"):
            await writes.flush("w2")
        await writes.flush("w3")  # another task's flush is not failed by it

    asyncio.run(run())
    backend.store_many([ResultRecord("w0", SUCCESS, "again"), ResultRecord("w1", SUCCESS, "Hello!")])
    assert list(backend.stream("w1", timeout=5)) == ["Hello", "!"]
    assert list(backend.stream("w0", timeout=5)) == ["again"]
    raw = backend.client.call("LRANGE", "taskq-chunks:w0", 0, -1)
    assert raw[1] == RESTART_MARK and len(raw) == 3, "w0: its first attempt, the restart mark, the retry"
