"""One model call from inside a task: stream tokens into partial results, classify failures, account.

Use it from a bound coroutine task (see ``tasks/llm.py``)::

    llm = LLM(app)

    @app.task(key="user_id", bind=True, max_retries=5, retry_backoff=True, time_limit=120)
    async def infer(self, prompt, user_id="anonymous"):
        return await complete(self, llm, prompt, model="claude-sonnet-4-6", user_id=user_id)

    llm.install(infer)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from taskq.errors import Retry
from taskq.llm.failures import ProviderUnavailable, classify
from taskq.llm.pricing import cost
from taskq.llm.usage import Usage
from taskq.task import Task

if TYPE_CHECKING:
    from taskq.llm.service import LLM

META_KEY = "llm"  # result meta: {"llm": {"model", "input_tokens", "output_tokens", "latency", "cost", "user"}}


async def complete(task: Task, llm: LLM, prompt: str, *, model: str, user_id: str | None = None,
                   max_tokens: int = 256, system: str | None = None, temperature: float | None = None,
                   ) -> dict[str, Any]:
    """Stream an answer to ``prompt``; text deltas become partial results of the running task as they arrive
    (written with the event loop's next batch of store writes, at most 20 ms later: :mod:`taskq.llm.writes`).

    Returns ``{"text", "stop_reason", "usage": {"input_tokens", "output_tokens"}, "model", "latency",
    "cost", "user_id"}`` and puts the same accounting in ``task.request.meta["llm"]``. Provider failures
    become ``task.retry(...)`` (countdown = the provider's ``retry-after`` when given, at most the task's
    ``retry_backoff_max``) or a :class:`~taskq.llm.failures.ProviderRejected` dead letter. A user over budget fails with
    :class:`~taskq.errors.BudgetExceeded`; the provider key's RPM/TPM limits make the call wait its turn.
    """
    request = task.request
    guard = llm.guard
    guard.check_budget(user_id)
    writes = llm.writes()
    # callers watching stream() drop an earlier attempt's text: a failed one, or one whose worker died
    # mid-answer (its redelivery runs again with the same attempt number, so every attempt marks a restart)
    writes.restart(request.id)
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": prompt}]}
    if system is not None:
        params["system"] = system
    if temperature is not None:  # anthropic >= 2 has no temperature argument; older ones send it the same way
        params["extra_body"] = {"temperature": temperature}
    if user_id is not None:
        params["metadata"] = {"user_id": user_id}
    client = llm.client()
    api_key = llm.clients.config.api_key
    estimate = estimate_tokens(prompt, system) + max_tokens
    await guard.take_turn(api_key, estimate)
    started = time.perf_counter()
    parts: list[str] = []
    task_id = request.id
    stream: Any = None
    try:
        try:
            async with client.messages.stream(**params) as stream:
                async for text in stream.text_stream:
                    parts.append(text)
                    writes.text(task_id, text)  # published with the loop's next batch (<= 20 ms)
                final = await stream.get_final_message()
            if final.stop_reason is None:  # the response ended cleanly but unfinished (a proxy, a restart)
                raise ProviderUnavailable(f"the model provider's stream ended after {len(parts)} text deltas, "
                                          f"before the answer did (no stop_reason)")
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not a provider failure
            await writes.flush()  # this attempt's chunks are stored before its retry can mark a restart
            guard.settle(api_key, estimate, reported_tokens(stream))  # its retry reserves again
            failure = classify(exc)
            if failure is None:
                raise
            if failure.retry:
                raise task.retry(failure.error, countdown=retry_countdown(task, failure.retry_after)) from exc
            raise failure.error from exc
        latency = round(time.perf_counter() - started, 4)
        usage = {"input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens}
        guard.settle(api_key, estimate, usage["input_tokens"] + usage["output_tokens"])
        price = cost(final.model, usage["input_tokens"], usage["output_tokens"])
        request.meta[META_KEY] = {"model": final.model, **usage, "latency": latency, "cost": price,
                                  "user": user_id}
        writes.usage(Usage(user_id or "anonymous", task.name, request.root, final.model, usage["input_tokens"],
                           usage["output_tokens"], price, latency, time.time()))
        await writes.flush(task_id)  # chunks and usage stored before the result (raises a failed chunk write)
    finally:
        writes.forget(task_id)
    return {"text": "".join(parts), "stop_reason": final.stop_reason, "usage": usage, "model": final.model,
            "latency": latency, "cost": price, "user_id": user_id}


def reported_tokens(stream: Any) -> int:
    """The tokens the provider reported for a stream that failed: 0 when its answer never began."""
    try:
        usage = stream.current_message_snapshot.usage
    except (AssertionError, AttributeError):  # no stream, or no message_start yet
        return 0
    return int(usage.input_tokens or 0) + int(usage.output_tokens or 0)


def retry_countdown(task: Task, retry_after: float | None) -> float | None:
    """The provider's ``retry-after``, at most the task's ``retry_backoff_max`` (None: the task's backoff)."""
    return None if retry_after is None else min(retry_after, task.retry_policy.retry_backoff_max)


def estimate_tokens(prompt: str, system: str | None = None) -> int:
    """A rough input token count before the call (about four characters a token)."""
    return max(1, (len(prompt) + len(system or "")) // 4)
