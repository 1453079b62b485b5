"""LLM inference: the anthropic SDK when configured, else a small local stand-in model.

The task is keyed by ``user_id`` so one user's prompts run in order; tokens are streamed to callers
as partial results (``AsyncResult.stream()``).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import Any

from tasks.app import app

DEFAULT_MODEL = "claude-sonnet-4-5"


class TransientLLMError(Exception):
    """Overloaded or rate-limited: worth retrying later."""


def _anthropic_client() -> Any | None:
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_BASE_URL")):
        return None
    try:
        import anthropic
    except ImportError:
        return None
    return anthropic.Anthropic()


def fake_completion(prompt: str, max_tokens: int) -> list[str]:
    """A deterministic answer for ``prompt`` (used when no model is configured)."""
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    words = ["Kafka", "keeps", "each", "user's", "tasks", "in", "order", "while", "workers", "share",
             "partitions", "and", "results", "land", "in", "the", "store", "quickly"]
    return [rng.choice(words) for _ in range(min(max_tokens, 8 + seed % 12))]


@app.task(key="user_id", bind=True, autoretry_for=(TransientLLMError,), max_retries=3, retry_backoff=True)
def infer(self: Any, prompt: str, user_id: str, max_tokens: int = 256, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """Answer ``prompt`` for ``user_id``; streams tokens as partial results."""
    started = time.perf_counter()
    backend = app.backend
    task_id = self.request.id
    client = _anthropic_client()
    tokens: list[str] = []
    usage = {"input_tokens": len(prompt.split()), "output_tokens": 0}
    if client is None:
        for token in fake_completion(prompt, max_tokens):
            time.sleep(0.005)
            tokens.append(token)
            backend.append_chunk(task_id, token + " ")
        usage["output_tokens"] = len(tokens)
    else:
        import anthropic

        try:
            with client.messages.stream(model=model, max_tokens=max_tokens,
                                        messages=[{"role": "user", "content": prompt}]) as stream:
                for text in stream.text_stream:
                    tokens.append(text)
                    backend.append_chunk(task_id, text)
                final = stream.get_final_message()
            usage = {"input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens}
        except (anthropic.RateLimitError, anthropic.InternalServerError, anthropic.APIConnectionError) as exc:
            raise TransientLLMError(str(exc)) from exc
    text = " ".join(tokens) if client is None else "".join(tokens)
    return {"user_id": user_id, "text": text, "usage": usage, "model": model if client else "local-stand-in",
            "seconds": round(time.perf_counter() - started, 4)}
