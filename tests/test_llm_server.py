"""The Messages API stand-in, driven by the real ``anthropic`` SDK (max_retries=0: the caller retries)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import uuid
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")

from taskq.devtools.llm_server import LLMServer, LLMServerClient, answer, parse_prompt  # noqa: E402

MODEL = "claude-sonnet-4-6"


def client(url: str, read: float = 10.0) -> Any:
    return anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0,
                               timeout=anthropic.Timeout(read, connect=2.0))


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_json_answer_is_deterministic_with_usage(llm_server: LLMServerClient) -> None:
    prompt = f"why kafka {uuid.uuid4().hex}"
    c = client(llm_server.url)
    first = c.messages.create(model=MODEL, max_tokens=100, messages=ask(prompt))
    second = c.messages.create(model=MODEL, max_tokens=100, messages=ask(prompt))
    assert first.content[0].text == second.content[0].text
    assert first.stop_reason == "end_turn" and first.model == MODEL
    assert first.usage.output_tokens == len(answer(prompt, 100)[0])
    assert first.usage.input_tokens == c.messages.count_tokens(model=MODEL, messages=ask(prompt)).input_tokens
    short = c.messages.create(model=MODEL, max_tokens=2, messages=ask(prompt))
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_stream_event_sequence(llm_server: LLMServerClient) -> None:
    prompt = f"stream me {uuid.uuid4().hex} [[tokens=5]]"
    events = list(client(llm_server.url).messages.create(model=MODEL, max_tokens=50, messages=ask(prompt),
                                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert all(e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")
    assert events[-2].usage.output_tokens == 5 and events[-2].delta.stop_reason == "end_turn"
    with client(llm_server.url).messages.stream(model=MODEL, max_tokens=50, messages=ask(prompt)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == "".join(answer(parse_prompt({"messages": ask(prompt)}).clean, 50, 5)[0])


def test_scripted_replies_answer_matching_prompts_streamed_or_not(llm_server: LLMServerClient) -> None:
    tag = uuid.uuid4().hex
    plan = "research: lag\n  code: an exporter"
    llm_server.add_reply(plan, match=tag, times=2)
    c = client(llm_server.url)
    assert c.messages.create(model=MODEL, max_tokens=100, messages=ask(f"plan {tag}")).content[0].text == plan
    with c.messages.stream(model=MODEL, max_tokens=100, messages=ask(f"plan {tag}")) as stream:
        assert "".join(stream.text_stream) == plan
        assert stream.get_final_message().usage.output_tokens == 5  # a word with the whitespace before it
    third = c.messages.create(model=MODEL, max_tokens=100, messages=ask(f"plan {tag}")).content[0].text
    assert third != plan  # times=2 used up: back to the deterministic answer
    llm_server.add_reply(plan, match=tag, times=1)
    cut = c.messages.create(model=MODEL, max_tokens=2, messages=ask(f"plan {tag}"))
    assert (cut.content[0].text, cut.stop_reason) == ("research: lag", "max_tokens")
    with pytest.raises(urllib.error.HTTPError, match="400"):
        llm_server.add_reply(None, match="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(("fault", "error", "status", "kind"), [
    ("rate_limit retry_after=3", "RateLimitError", 429, "rate_limit_error"),
    ("overloaded", "OverloadedError", 529, "overloaded_error"),
    ("server_error", "InternalServerError", 500, "api_error"),
    ("invalid_request", "BadRequestError", 400, "invalid_request_error"),
    ("mid_stream_overloaded", "APIStatusError", 200, "overloaded_error"),
])
def test_status_faults_reach_the_sdk_as_its_own_errors(llm_server: LLMServerClient, fault: str, error: str,
                                                        status: int, kind: str) -> None:
    prompt = f"fail {uuid.uuid4().hex} [[fault:{fault}]]"
    with pytest.raises(getattr(anthropic, error)) as info:
        with client(llm_server.url).messages.stream(model=MODEL, max_tokens=50, messages=ask(prompt)) as stream:
            list(stream.text_stream)
    assert info.value.status_code == status and info.value.type == kind
    if status == 429:
        assert info.value.response.headers["retry-after"] == "3"


def test_mid_stream_faults_come_after_some_text(llm_server: LLMServerClient) -> None:
    import httpx2 as httpx  # the SDK's HTTP client (anthropic >= 2 uses httpx2)

    seen: list[str] = []
    prompt = f"cut me {uuid.uuid4().hex} [[fault:cut after=3]] [[tokens=10]]"
    with pytest.raises(httpx.RemoteProtocolError):
        with client(llm_server.url).messages.stream(model=MODEL, max_tokens=50, messages=ask(prompt)) as stream:
            for text in stream.text_stream:
                seen.append(text)
    assert len(seen) == 3
    seen.clear()
    prompt = f"overload me {uuid.uuid4().hex} [[fault:mid_stream_overloaded after=2]]"
    with pytest.raises(anthropic.APIStatusError) as info:
        with client(llm_server.url).messages.stream(model=MODEL, max_tokens=50, messages=ask(prompt)) as stream:
            for text in stream.text_stream:
                seen.append(text)
    assert len(seen) == 2 and info.value.type == "overloaded_error"


def test_stall_hits_the_read_timeout(llm_server: LLMServerClient) -> None:
    import httpx2 as httpx

    start = time.monotonic()
    with pytest.raises((anthropic.APITimeoutError, httpx.ReadTimeout)):
        with client(llm_server.url, read=0.5).messages.stream(
                model=MODEL, max_tokens=50, messages=ask(f"stall {uuid.uuid4().hex} [[fault:stall_mid seconds=5]]")
        ) as stream:
            list(stream.text_stream)
    with pytest.raises(anthropic.APITimeoutError):
        client(llm_server.url, read=0.5).messages.create(
            model=MODEL, max_tokens=50, messages=ask(f"stall {uuid.uuid4().hex} [[fault:stall seconds=5]]"))
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("marker", ["[[latency=nan]]", "[[tps=inf]]", "[[fault:stall seconds=nan]]",
                                    "[[fault:stall_mid seconds=inf]]"])
def test_a_sleep_that_never_ends_is_a_bad_marker(llm_server: LLMServerClient, marker: str) -> None:
    """The server would sleep forever (NaN, infinity) on these; it answers 400 at once instead."""
    start = time.monotonic()
    with pytest.raises(anthropic.BadRequestError, match="bad stand-in marker"):
        client(llm_server.url, read=5.0).messages.create(model=MODEL, max_tokens=5, messages=ask(f"hi {marker}"))
    assert time.monotonic() - start < 2


def test_times_counts_per_prompt_and_control_faults_match(llm_server: LLMServerClient) -> None:
    c = client(llm_server.url)
    prompt = f"twice {uuid.uuid4().hex} [[fault:overloaded times=2]]"
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            c.messages.create(model=MODEL, max_tokens=20, messages=ask(prompt))
    assert c.messages.create(model=MODEL, max_tokens=20, messages=ask(prompt)).stop_reason == "end_turn"
    tag = uuid.uuid4().hex
    llm_server.add_fault("rate_limit", times=1, retry_after=2, match=tag)
    c.messages.create(model=MODEL, max_tokens=20, messages=ask("some other prompt"))  # not matched
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model=MODEL, max_tokens=20, messages=ask(f"hello {tag}"))
    c.messages.create(model=MODEL, max_tokens=20, messages=ask(f"hello {tag}"))
    log = [r for r in llm_server.requests() if r["fault"] == "rate_limit" and r["status"] == 429]
    assert log and all(len(r["key"]) == 12 and "test-key" not in str(r) for r in log)


def test_latency_and_tokens_per_second() -> None:
    with LLMServer(latency=0.3, tokens_per_second=20) as server:
        c = client(server.url)
        start = time.monotonic()
        with c.messages.stream(model=MODEL, max_tokens=50, messages=ask("slow [[tokens=10]]")) as stream:
            first = None
            for _ in stream.text_stream:
                first = first or time.monotonic() - start
        total = time.monotonic() - start
    assert first is not None and 0.3 <= first < 0.3 + 0.4
    assert 0.3 + 10 / 20 <= total < 0.3 + 10 / 20 + 0.6


def test_serves_500_concurrent_streams(llm_server: LLMServerClient) -> None:
    """All 500 streams are open at the server at once (each waits 3 s before its first byte)."""
    llm_server.reset()

    async def main() -> float:
        async with anthropic.AsyncAnthropic(base_url=llm_server.url, api_key="k", max_retries=0,
                                            timeout=anthropic.Timeout(120, connect=60)) as c:
            async def one(i: int) -> str:
                async with c.messages.stream(model=MODEL, max_tokens=8,
                                             messages=ask(f"many {i} [[latency=3.0]] [[tokens=2]]")) as stream:
                    return "".join([t async for t in stream.text_stream])
            start = time.monotonic()
            texts = await asyncio.gather(*(one(i) for i in range(500)))
            assert all(texts)
            return time.monotonic() - start
    elapsed = asyncio.run(main())
    peak = llm_server.health()["peak_active"]
    print(f"\n500 streams with 3 s latency: {elapsed:.1f} s, peak concurrent at the server {peak}")
    assert peak >= 500  # (stalled requests of earlier tests may still be open)
    assert elapsed < 500 * 3.0 / 10  # far from one at a time
