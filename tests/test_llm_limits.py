"""Rate limits held across worker processes (Redis token bucket), provider RPM/TPM, and the tumbling-window
violations job, on real Kafka and Redis with the real anthropic SDK against the stand-in."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("anthropic")

from taskq.devtools.llm_server import LLMServerClient  # noqa: E402
from taskq.errors import RateLimited  # noqa: E402
from taskq.llm import Limits, LLMConfig  # noqa: E402
from taskq.llm.violations import ViolationBlocker, ViolationCounter, violations_topic  # noqa: E402
from tests.apps.llmapp import build  # noqa: E402
from tests.support import ROOT, WorkerProcess, read_records  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]
APP = "tests.apps.llmapp"


@pytest.fixture
def two_workers(kafka_url: str, redis_clean: str, llm_server: LLMServerClient, unique: str,
                request: pytest.FixtureRequest) -> Iterator[Any]:
    """Two ``taskq worker`` processes of tests.apps.llmapp with the environment the test asks for."""
    started: list[WorkerProcess] = []

    def start(task: str, **extra: str) -> tuple[Any, Any]:
        env = {"TASKQ_BROKER_URL": kafka_url, "TASKQ_RESULT_BACKEND": redis_clean,
               "TASKQ_TOPIC_PREFIX": f"lim{unique}.", "TASKQ_GROUP": f"lim{unique}.group",
               "TASKQ_LLM_BASE_URL": llm_server.url, "PYTHONPATH": str(ROOT), **extra}
        app, infer, llm = build("llmapp", broker=kafka_url, backend=redis_clean, topic_prefix=f"lim{unique}.",
                                group=f"lim{unique}.group")
        app.ensure_topics({t.topic: 4 for t in app.tasks.values()})
        for i in range(2):
            started.append(WorkerProcess(APP, env, "--pool", "asyncio", "-c", "100", "-Q", task, name=f"w{i}"))
        for w in started:
            w.wait_for("assigned")
        time.sleep(2)  # let the group settle so both members hold partitions
        return app, app.tasks

    yield start
    for w in started:
        w.stop()


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def test_task_rate_limit_holds_across_two_workers(two_workers: Any) -> None:
    app, tasks = two_workers("tests.apps.llmapp.limited", LLMAPP_RATE="300/m")  # 5/s
    results = [tasks["tests.apps.llmapp.limited"].delay(f"k{i}", i) for i in range(31)]
    app.flush()
    ran = [r.get(timeout=90) for r in results]
    workers = {r.record.worker for r in results}
    measured = rate(ran)
    print(f"\ntask rate_limit 300/m over two workers: {measured:.3f}/s (limit 5/s), workers {sorted(workers)}")
    assert len(workers) == 2
    assert abs(measured - 5.0) / 5.0 <= 0.10


def test_per_key_limit_does_not_hold_back_other_keys(two_workers: Any) -> None:
    app, tasks = two_workers("tests.apps.llmapp.limited_per_key", LLMAPP_KEY_RATE="240/m")  # 4/s per key
    task = tasks["tests.apps.llmapp.limited_per_key"]
    results = {k: [task.delay(k, i) for i in range(9)] for k in ("a", "b", "c")}
    app.flush()
    ran = {k: [r.get(timeout=90) for r in rs] for k, rs in results.items()}
    for k, times in ran.items():
        assert times == sorted(times), "per-key order kept"
        assert abs(rate(times) - 4.0) / 4.0 <= 0.10, (k, rate(times))
    overall = rate([t for times in ran.values() for t in times])
    print(f"\nper-key 240/m, 3 keys: per key {[round(rate(t), 3) for t in ran.values()]}/s, overall {overall:.2f}/s")
    assert overall > 2.5 * 4.0, "keys were held back by each other"


@pytest.mark.parametrize("limit", ["rpm", "tpm"])
def test_provider_rpm_and_tpm_across_two_workers(two_workers: Any, llm_server: LLMServerClient, limit: str) -> None:
    env = {"TASKQ_LLM_RPM": "240"} if limit == "rpm" else {"TASKQ_LLM_TPM": "6000"}  # 4 req/s, 100 tokens/s
    app, tasks = two_workers("tests.apps.llmapp.infer", **env)
    infer = tasks["tests.apps.llmapp.infer"]
    tag = uuid.uuid4().hex[:8]
    since = time.time()
    results = [infer.delay(f"q{i} {tag} [[tokens=20]]", user_id=f"{tag}-{i % 9}", max_tokens=20) for i in range(25)]
    app.flush()
    for r in results:
        r.get(timeout=120)
    seen = sorted((r for r in llm_server.requests(since) if str(r["user_id"]).startswith(tag)), key=lambda r: r["ts"])
    assert len(seen) == 25 and len({r.record.worker for r in results}) == 2
    span = seen[-1]["ts"] - seen[0]["ts"]
    if limit == "rpm":
        measured, expected = (len(seen) - 1) / span, 4.0
    else:
        measured, expected = sum(r["input_tokens"] + r["output_tokens"] for r in seen[:-1]) / span, 100.0
    print(f"\nprovider {limit} over two workers: {measured:.2f}/s (limit {expected:g}/s)")
    assert abs(measured - expected) / expected <= 0.10


def test_calls_waiting_their_provider_turn_are_not_timed_out(kafka_url: str, redis_clean: str,
                                                            llm_server: LLMServerClient, unique: str) -> None:
    """600 tokens a minute (10/s) and six calls of about 25 tokens: the last waits 12 s for its turn, more
    than twice its 5 s time limit. Calls wait their turn instead of failing."""
    from tests.support import worker_thread

    config = LLMConfig("k", llm_server.url, connect_timeout=2.0, read_timeout=5.0)
    app, infer, _ = build(f"tpm{unique}", config, time_limit=5.0, limits=Limits(tpm=600), broker=kafka_url,
                          backend=redis_clean, topic_prefix=f"tpm{unique}.", group=f"tpm{unique}.group")
    app.ensure_topics({infer.topic: 2})
    try:
        with worker_thread(app, pool="asyncio", concurrency=20):
            results = [infer.delay(f"wait {i} {unique}", user_id=f"tpm-{i}", max_tokens=20) for i in range(6)]
            assert all(r.get(timeout=60)["text"] for r in results)
            assert all(r.record.attempts == 1 for r in results)
    finally:
        app.close()


def test_a_refused_attempt_gives_back_its_token_reservation(kafka_url: str, redis_clean: str,
                                                            llm_server: LLMServerClient, unique: str) -> None:
    """600 tokens a minute (10/s). Each attempt reserves its estimate (prompt and max_tokens, ~160 here),
    and only an answer settled it to what the provider reported: each attempt refused with 429 kept its
    ~160, so the next attempt of the same call waited ~16 s for its turn (33 s for two refusals)."""
    from tests.support import worker_thread

    config = LLMConfig("k", llm_server.url, connect_timeout=2.0, read_timeout=5.0)
    app, infer, _ = build(f"give{unique}", config, limits=Limits(tpm=600), broker=kafka_url, backend=redis_clean,
                          topic_prefix=f"give{unique}.", group=f"give{unique}.group")
    app.ensure_topics({infer.topic: 1})
    try:
        with worker_thread(app, pool="asyncio", concurrency=4):
            started = time.monotonic()
            flaky = infer.delay(f"busy {unique} [[fault:rate_limit times=2 retry_after=0.1]]", user_id="give-1",
                                max_tokens=150)
            assert flaky.get(timeout=60)["text"] and flaky.record.attempts == 3
            assert time.monotonic() - started < 10, "the refused attempts' reservations were kept"
    finally:
        app.close()


def test_tumbling_window_violations_block_users(kafka_url: str, redis_clean: str, llm_server: LLMServerClient,
                                                unique: str) -> None:
    app, infer, llm = build(f"viol{unique}", LLMConfig("k", llm_server.url), limits=Limits(),
                            broker=kafka_url, backend=redis_clean, topic_prefix=f"viol{unique}.",
                            group=f"viol{unique}.group")
    app.ensure_topics({infer.topic: 2, violations_topic(app): 2})
    stop = threading.Event()
    counter = ViolationCounter(app, infer, window=2.0, threshold=5, grace=0.5)
    blocker = ViolationBlocker(app, llm.guard, block_for=3.0)
    jobs = [threading.Thread(target=j.run, args=(stop,), daemon=True) for j in (counter, blocker)]
    for j in jobs:
        j.start()
    try:
        time.sleep(1.0)  # both consumers joined
        for i in range(8):
            infer.delay(f"spam {i}", user_id="spammer")
        for i in range(2):
            infer.delay(f"calm {i}", user_id="calm")
        app.flush()
        deadline = time.monotonic() + 30
        while blocker.blocked == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert blocker.blocked == 1
        with pytest.raises(RateLimited) as info:
            infer.delay("again", user_id="spammer")
        assert 0 < info.value.retry_after <= 3.0
        infer.delay("fine", user_id="calm")
        notices = llm.guard.blocks.notices()
        assert notices[0]["user"] == "spammer" and notices[0]["requests"] == 8 and "blocked" in notices[0]["notice"]
        published = read_records(app, violations_topic(app), 1, timeout=10)
        assert [r.key for r in published] == [b"spammer"]
        time.sleep(3.2)  # the block expires
        infer.delay("after the block", user_id="spammer")
    finally:
        stop.set()
        for j in jobs:
            j.join(30)
        app.close()
