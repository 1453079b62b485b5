"""The benchmark tasks, and ``bench_app``, the app a benchmark's worker process loads.

A module of its own so that the worker imports only this, not the benchmark commands (``benchmarks.bench``):
what a worker's CPU seconds measure is then the worker's own work and its tasks, as in an application.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from taskq.app import Taskq

NOOP = "bench.noop"
SLEEP = "bench.sleep"
STAMP = "bench.stamp"  # keyed, returns when it ran (benchmarks/rebalance.py)
INFER = "bench.infer"  # a model call through the anthropic SDK (taskq.llm), answered by the local stand-in


def make_app(broker: str | None = None, backend: str | None = None, **settings: Any) -> Taskq:
    """An app with the benchmark tasks; anything not passed comes from ``TASKQ_*`` variables."""
    app = Taskq("bench", broker=broker, backend=backend, **settings)

    @app.task(name=NOOP)
    def noop() -> None:
        return None

    @app.task(name=STAMP, key="key")
    def stamp(key: str, seq: int) -> list[Any]:
        now = time.time()
        return [key, seq, now, now]

    @app.task(name=SLEEP, key="key")
    async def sleep(key: str, seq: int, seconds: float = 1.0) -> list[Any]:
        started = time.time()
        await asyncio.sleep(seconds)
        return [key, seq, started, time.time()]

    if not (os.environ.get("TASKQ_LLM_BASE_URL") or os.environ.get("ANTHROPIC_API_KEY")):
        return app  # no model to call (a worker would refuse to start): the other benchmarks still run
    try:
        from taskq.llm import LLM, complete
    except ImportError:  # the llm extra is not installed: no SDK benchmark
        return app
    llm = LLM(app)

    @app.task(name=INFER, key="key", bind=True, max_retries=3, retry_backoff=True, time_limit=300)
    async def infer(self: Any, key: str, seq: int, prompt: str, max_tokens: int = 8) -> list[Any]:
        started = time.time()
        answer = await complete(self, llm, prompt, model="claude-haiku-4-5", user_id=key, max_tokens=max_tokens)
        return [key, seq, started, time.time(), answer["usage"]["output_tokens"]]

    llm.install(infer)
    return app


def __getattr__(name: str) -> Any:
    """``bench_app`` (what ``taskq worker -A benchmarks.app:bench_app`` loads) is built on first use."""
    if name == "bench_app":
        app = make_app()
        globals()["bench_app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
