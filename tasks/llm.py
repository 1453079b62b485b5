"""LLM inference with the anthropic SDK (``pip install 'taskq[llm]'``).

Configure with ``ANTHROPIC_API_KEY`` (the Anthropic API) or ``TASKQ_LLM_BASE_URL`` (a Messages API server
such as ``taskq llm-server``); a worker without either refuses to start and names them. Run the worker with
``--pool asyncio`` to have hundreds of calls in flight in one process.

The task is keyed by ``user_id`` so one user's prompts run in order; tokens stream to callers as partial
results (``AsyncResult.stream()``); retries follow the provider (``retry-after``), other 4xx are dead letters.
"""

from __future__ import annotations

from typing import Any

from taskq.llm import LLM, complete
from tasks.app import app

DEFAULT_MODEL = "claude-sonnet-4-6"
TIME_LIMIT = 300.0  # seconds for one attempt, start to last token

#: the SDK client (one per worker process), limits, budgets and usage accounting of this app
llm = LLM(app)


@app.task(key="user_id", bind=True, max_retries=5, retry_backoff=True, retry_backoff_max=60.0,
          time_limit=TIME_LIMIT)
async def infer(self: Any, prompt: str, user_id: str = "anonymous", model: str = DEFAULT_MODEL,
                max_tokens: int = 256, system: str | None = None, temperature: float | None = None,
                ) -> dict[str, Any]:
    """Answer ``prompt`` for ``user_id``: text, stop reason, usage, model, latency and cost."""
    return await complete(self, llm, prompt, model=model, user_id=user_id, max_tokens=max_tokens,
                          system=system, temperature=temperature)

# startup check (no API key and no base URL: the worker refuses to start, naming them), usage roll-ups,
# budgets and blocked users checked at .delay()
llm.install(infer)
