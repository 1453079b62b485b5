"""A test app with the LLM ``infer`` task (same code path as ``tasks/llm.py``), built per test.

As a module (``taskq worker -A tests.apps.llmapp``) it is configured by the environment: TASKQ_* for the
app, ANTHROPIC_API_KEY / TASKQ_LLM_BASE_URL / TASKQ_LLM_READ_TIMEOUT for the provider.
"""

from __future__ import annotations

import os
import time
from typing import Any

from taskq import Taskq
from taskq.llm import LLM, Limits, LLMConfig, complete
from taskq.task import Task

MODEL = "claude-sonnet-4-6"


def build(name: str = "llmapp", config: LLMConfig | None = None, max_retries: int = 4,
          time_limit: float = 60.0, limits: Limits | None = None, **settings: Any) -> tuple[Taskq, Task, LLM]:
    app = Taskq(name, **settings)
    llm = LLM(app, config, limits)

    @app.task(name="tests.apps.llmapp.infer", key="user_id", bind=True, max_retries=max_retries,
              retry_backoff=0.1, retry_backoff_max=5.0, time_limit=time_limit)
    async def infer(self: Any, prompt: str, user_id: str = "anonymous", model: str = MODEL,
                    max_tokens: int = 256, system: str | None = None, temperature: float | None = None,
                    ) -> dict[str, Any]:
        return await complete(self, llm, prompt, model=model, user_id=user_id, max_tokens=max_tokens,
                              system=system, temperature=temperature)

    @app.task(name="tests.apps.llmapp.limited", key="key", rate_limit=os.environ.get("LLMAPP_RATE", "300/m"))
    def limited(key: str, seq: int) -> float:
        return time.time()

    @app.task(name="tests.apps.llmapp.limited_per_key", key="key", rate_limit_per_key=True,
              rate_limit=os.environ.get("LLMAPP_KEY_RATE", "120/m"))
    async def limited_per_key(key: str, seq: int) -> float:
        return time.time()

    llm.install(infer)
    return app, infer, llm


app, infer, LLM_ = build()
