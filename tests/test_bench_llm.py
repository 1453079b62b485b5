"""``taskq bench llm`` on the real services: a few keyed model calls through the anthropic SDK."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_the_llm_benchmark_calls_the_model_through_the_sdk(kafka_url: str, redis_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``taskq bench llm`` end to end on a few keyed calls: the stand-in answers, order per key holds."""
    from benchmarks.bench import Target, run_llm

    for name in ("TASKQ_LLM_BASE_URL", "ANTHROPIC_API_KEY"):  # the benchmark starts its own stand-in
        monkeypatch.delenv(name, raising=False)
    report = run_llm(Target(kafka_url, redis_url), n=12, keys=3, seconds=0.05, concurrency=6, timeout=120)
    assert "TASKQ_LLM_BASE_URL" not in os.environ  # set for the run only
    assert (report["failed"], report["order_kept"], report["via"]) == (0, True, "anthropic SDK -> stand-in")
    assert report["output_tokens"] > 0
