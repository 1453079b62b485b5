"""One model call from inside a task: stream tokens into partial results, classify failures, account.

Use it from a bound coroutine task (see ``tasks/llm.py``)::

    @app.task(key="user_id", bind=True, max_retries=5, retry_backoff=True, time_limit=120)
    async def infer(self, prompt, user_id="anonymous"):
        return await complete(self, CLIENTS, prompt, user_id=user_id)
"""

from __future__ import annotations

import time
from typing import Any

from taskq.errors import Retry
from taskq.llm.client import LLMClients
from taskq.llm.failures import classify
from taskq.llm.pricing import cost
from taskq.task import Task

META_KEY = "llm"  # result meta: {"llm": {"model", "input_tokens", "output_tokens", "latency", "cost", "user"}}


async def complete(task: Task, clients: LLMClients, prompt: str, *, model: str, user_id: str | None = None,
                   max_tokens: int = 256, system: str | None = None, temperature: float | None = None,
                   ) -> dict[str, Any]:
    """Stream an answer to ``prompt``; every text delta is a partial result of the running task.

    Returns ``{"text", "stop_reason", "usage": {"input_tokens", "output_tokens"}, "model", "latency",
    "cost", "user_id"}`` and puts the same accounting in ``task.request.meta["llm"]``. Provider failures
    become ``task.retry(...)`` (countdown = the provider's ``retry-after`` when given) or a
    :class:`~taskq.llm.failures.ProviderRejected` dead letter.
    """
    request = task.request
    backend = task.app.backend
    if request.attempts:
        backend.restart_chunks(request.id)  # callers watching stream() drop the failed attempt's text
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": prompt}]}
    if system is not None:
        params["system"] = system
    if temperature is not None:  # anthropic >= 2 has no temperature argument; older ones send it the same way
        params["extra_body"] = {"temperature": temperature}
    if user_id is not None:
        params["metadata"] = {"user_id": user_id}
    client = clients.get()
    started = time.perf_counter()
    parts: list[str] = []
    try:
        async with client.messages.stream(**params) as stream:
            async for text in stream.text_stream:
                parts.append(text)
                backend.append_chunk(request.id, text)
            final = await stream.get_final_message()
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not a provider failure
        failure = classify(exc)
        if failure is None:
            raise
        if failure.retry:
            raise task.retry(failure.error, countdown=failure.retry_after) from exc
        raise failure.error from exc
    latency = round(time.perf_counter() - started, 4)
    usage = {"input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens}
    price = cost(final.model, usage["input_tokens"], usage["output_tokens"])
    request.meta[META_KEY] = {"model": final.model, **usage, "latency": latency, "cost": price, "user": user_id}
    return {"text": "".join(parts), "stop_reason": final.stop_reason, "usage": usage, "model": final.model,
            "latency": latency, "cost": price, "user_id": user_id}
