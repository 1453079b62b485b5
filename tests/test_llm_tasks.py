"""``infer`` through the real anthropic SDK against the stand-in, on real Kafka and Redis: every provider
failure mode ends the way a user expects, and streaming shows only the attempt that produced the result."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("anthropic")

from taskq.devtools.llm_server import LLMServerClient  # noqa: E402
from taskq.llm import LLMConfig  # noqa: E402
from taskq.results.base import StreamRestart  # noqa: E402
from tests.apps.llmapp import build  # noqa: E402
from tests.support import ROOT, read_records, worker_thread  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.fixture
def llm(kafka_url: str, redis_url: str, llm_server: LLMServerClient, unique: str) -> Iterator[Any]:
    config = LLMConfig("test-key", llm_server.url, connect_timeout=2.0, read_timeout=1.0)
    app, infer, clients = build(f"llm{unique}", config, broker=kafka_url, backend=redis_url,
                                topic_prefix=f"llm{unique}.", group=f"llm{unique}.group")
    app.ensure_topics({infer.topic: 2, app.dlq_topic(infer.topic): 2})
    with worker_thread(app, pool="asyncio", concurrency=50):
        yield app, infer, clients, llm_server
    app.close()


def prompt(text: str) -> str:
    return f"{text} {uuid.uuid4().hex}"


def test_answer_with_usage_cost_and_meta(llm: Any) -> None:
    app, infer, clients, server = llm
    result = infer.delay(prompt("hello"), user_id="u1", max_tokens=64, system="Be brief.", temperature=0.2)
    value = result.get(timeout=60)
    assert value["text"] and value["stop_reason"] == "end_turn" and value["model"] == "claude-sonnet-4-6"
    assert value["usage"]["output_tokens"] == len(value["text"].split()) and value["usage"]["input_tokens"] > 3
    assert value["cost"] == pytest.approx((value["usage"]["input_tokens"] * 3 + value["usage"]["output_tokens"] * 15)
                                          / 1e6)
    meta = result.record.meta["llm"]
    assert meta["user"] == "u1" and meta["output_tokens"] == value["usage"]["output_tokens"] and meta["latency"] > 0
    assert "".join(result.stream(timeout=5)) == value["text"]
    assert infer.time_limit == 60.0  # every attempt has a bound


def test_429_waits_for_retry_after(llm: Any) -> None:
    app, infer, clients, server = llm
    text = prompt("slow down [[fault:rate_limit times=1 retry_after=3]]")
    since = time.time()
    result = infer.delay(text, user_id="u-429")
    assert result.get(timeout=60)["text"]
    assert result.record.attempts == 2
    mine = sorted(r["ts"] for r in server.requests(since) if r.get("user_id") == "u-429")
    assert len(mine) == 2, mine
    gap = mine[1] - mine[0]
    assert 3.0 <= gap < 3.0 + 2.5, f"retried {gap:.2f} s after a 429 with retry-after: 3"


@pytest.mark.parametrize("retry_after", ["100000", "inf"])
def test_an_absurd_retry_after_is_capped_by_the_backoff_max(llm: Any, retry_after: str) -> None:
    """A retry-after of a day (or ``inf``) would park the task that long (or fail it with a ConfigError)."""
    app, infer, clients, server = llm
    result = infer.delay(prompt(f"wait forever [[fault:rate_limit times=1 retry_after={retry_after}]]"),
                         user_id="u-retry-after")
    assert result.get(timeout=30)["text"]  # retry_backoff_max=5.0 in the test app
    assert result.record.attempts == 2


@pytest.mark.parametrize("fault", ["overloaded times=2", "server_error times=1",
                                   "mid_stream_overloaded times=1 after=2", "cut times=1 after=2",
                                   "end_early times=1 after=2", "malformed times=1 after=2",
                                   "stall times=1 seconds=40", "stall_mid times=1 seconds=40 after=2"])
def test_transient_failures_are_retried_to_success(llm: Any, fault: str) -> None:
    app, infer, clients, server = llm
    start = time.monotonic()
    result = infer.delay(prompt(f"flaky [[fault:{fault}]]"), user_id="u-transient")
    value = result.get(timeout=60)
    expected = 3 if "times=2" in fault else 2
    assert result.status == "SUCCESS" and result.record.attempts == expected
    assert "".join(result.stream(timeout=5)) == value["text"], "a late reader sees only the successful attempt"
    assert time.monotonic() - start < 20, "a stalled provider is cut off by the read timeout (1 s here)"


def test_bad_request_is_dead_lettered_with_the_api_error(llm: Any) -> None:
    app, infer, clients, server = llm
    result = infer.delay(prompt("malformed [[fault:invalid_request]]"), user_id="u-400")
    with pytest.raises(Exception) as info:
        result.get(timeout=60)
    assert type(info.value).__name__ == "ProviderRejected"
    assert "invalid_request_error: prompt is malformed" in str(info.value)
    assert result.record.attempts == 1
    dead = [r for r in read_records(app, app.dlq_topic(infer.topic), 1, timeout=20)
            if r.header("id") == result.id.encode()]
    assert len(dead) == 1


def test_retries_end_in_the_dead_letter_topic(llm: Any) -> None:
    app, infer, clients, server = llm
    result = infer.delay(prompt("always busy [[fault:overloaded]]"), user_id="u-529")
    with pytest.raises(Exception) as info:
        result.get(timeout=60)
    assert type(info.value).__name__ == "ProviderUnavailable" and "overloaded_error" in str(info.value)
    assert result.record.attempts == 5  # max_retries=4


def test_stream_is_live_and_marks_a_restart(llm: Any) -> None:
    app, infer, clients, server = llm
    result = infer.delay(prompt("stream [[fault:mid_stream_overloaded times=1 after=3]] [[tps=20]] [[tokens=12]]"),
                         user_id="u-stream")
    seen: list[Any] = []
    first_chunk_ready: list[bool] = []
    for chunk in result.stream(timeout=60):
        if not seen:
            first_chunk_ready.append(app.AsyncResult(result.id).ready())
        seen.append(chunk)
    value = result.get(timeout=10)
    assert first_chunk_ready == [False], "the caller saw a token before the task finished"
    restarts = [i for i, c in enumerate(seen) if isinstance(c, StreamRestart)]
    assert len(restarts) == 1 and restarts[0] == 3, seen
    assert "".join(seen[restarts[0] + 1:]) == value["text"]
    assert "".join(result.stream(timeout=5)) == value["text"]


def test_redelivered_attempt_replaces_a_dead_workers_tokens(llm: Any) -> None:
    """A worker killed mid-answer leaves its tokens; the redelivered message runs with the same attempt
    number, and stream() must show only the new attempt's tokens (not the dead one's, then all again)."""
    app, infer, clients, server = llm
    task_id = uuid.uuid4().hex
    app.backend.append_chunks([(task_id, "tokens of "), (task_id, "a killed worker ")])  # as a SIGKILL leaves them
    result = infer.apply_async((prompt("again"),), {"user_id": "u-redelivered"}, task_id=task_id)
    value = result.get(timeout=60)
    assert result.record.attempts == 1
    assert "".join(result.stream(timeout=5)) == value["text"]


def test_one_client_per_worker_process(llm: Any) -> None:
    app, infer, clients, server = llm
    results = [infer.delay(prompt("many"), user_id=f"u{i}") for i in range(40)]
    for r in results:
        r.get(timeout=60)
    assert len(clients.clients._clients) == 1


def test_worker_refuses_to_start_without_a_provider(kafka_url: str, redis_url: str, unique: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TASKQ_LLM_BASE_URL",
                                                            "ANTHROPIC_BASE_URL")}
    env.update(TASKQ_BROKER_URL=kafka_url, TASKQ_RESULT_BACKEND=redis_url, TASKQ_TOPIC_PREFIX=f"nokey{unique}.",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "taskq.cli", "worker", "-A", "tests.apps.llmapp", "--pool", "asyncio"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ANTHROPIC_API_KEY" in proc.stderr and "TASKQ_LLM_BASE_URL" in proc.stderr, proc.stderr


def test_keyed_order_kept_while_calls_overlap(llm: Any) -> None:
    app, infer, clients, server = llm
    results = [(u, i, infer.delay(prompt(f"order {i} [[latency=0.2]]"), user_id=f"order-{u}"))
               for i in range(5) for u in range(10)]
    done: dict[str, list[float]] = {}
    for u, _i, r in results:
        r.get(timeout=60)
        done.setdefault(f"order-{u}", []).append(r.record.date_done)
    assert all(times == sorted(times) for times in done.values())
