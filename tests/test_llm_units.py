"""LLM pieces without services: configuration, prices, restart marks in the local result store."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from taskq.errors import ConfigError
from taskq.llm.client import LLMConfig
from taskq.llm.guard import Limits
from taskq.llm.pricing import cost, price_of
from taskq.results.base import SUCCESS, ResultRecord, StreamRestart
from taskq.results.local import LocalBackend


def test_config_names_the_variables_when_nothing_is_set() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY.*TASKQ_LLM_BASE_URL"):
        LLMConfig.from_env({})
    config = LLMConfig.from_env({"TASKQ_LLM_BASE_URL": "http://127.0.0.1:1", "TASKQ_LLM_READ_TIMEOUT": "7"})
    assert config.read_timeout == 7.0 and config.api_key  # a placeholder key for a keyless stand-in
    secret = LLMConfig.from_env({"ANTHROPIC_API_KEY": "sk-secret"})
    assert "sk-secret" not in repr(secret)
    gateway = LLMConfig.from_env({"TASKQ_LLM_BASE_URL": "https://team:gw-secret@gateway.example/?api_key=k2"})
    assert "gw-secret" not in repr(gateway) and "k2" not in repr(gateway) and "gateway.example" in repr(gateway)
    for raw in ("soon", "nan", "inf", "0", "-1"):  # a stalled provider must be cut off, and a live one not at once
        with pytest.raises(ConfigError, match="TASKQ_LLM_READ_TIMEOUT"):
            LLMConfig.from_env({"ANTHROPIC_API_KEY": "k", "TASKQ_LLM_READ_TIMEOUT": raw})
    with pytest.raises(ConfigError, match="TASKQ_LLM_MAX_CONNECTIONS"):
        LLMConfig.from_env({"ANTHROPIC_API_KEY": "k", "TASKQ_LLM_MAX_CONNECTIONS": "0"})


@pytest.mark.parametrize("var, raw", [("TASKQ_LLM_DAILY_COST", "nan"), ("TASKQ_LLM_DAILY_COST", "inf"),
                                      ("TASKQ_LLM_DAILY_TOKENS", "-5"), ("TASKQ_LLM_RPM", "0"),
                                      ("TASKQ_LLM_TPM", "-100"), ("TASKQ_LLM_RPM", "nan")])
def test_limits_refuse_what_would_silently_disable_or_break_them(var: str, raw: str) -> None:
    """A NaN budget was never reached (no budget at all), an RPM of 0 meant no limit, a negative one a
    bucket running backwards."""
    with pytest.raises(ConfigError, match=var):
        Limits.from_env({var: raw})
    assert Limits.from_env({"TASKQ_LLM_DAILY_TOKENS": "0", "TASKQ_LLM_RPM": "0.5"}) == Limits(0, None, 0.5)


def test_a_call_without_user_id_is_checked_as_the_user_it_runs_for(tmp_path: Path) -> None:
    """``infer.delay(prompt)`` runs as user "anonymous": an anonymous caller over budget is refused at the send,
    as a named one is, instead of failing in the worker."""
    from taskq.errors import BudgetExceeded
    from tests.apps.llmapp import build

    app, infer, _ = build("anon", LLMConfig("k", "http://127.0.0.1:1"), limits=Limits(daily_tokens=0),
                          local_path=str(tmp_path / "anon.db"))
    with pytest.raises(BudgetExceeded, match="user 'u1'"):
        infer.delay("hi", user_id="u1")
    with pytest.raises(BudgetExceeded, match="user 'anonymous'"):
        infer.delay("hi")
    app.close()


def test_prices() -> None:
    assert cost("claude-sonnet-4-6", 1_000_000, 1_000_000) == 18.0
    assert price_of("claude-haiku-4-5-20251001") == price_of("claude-haiku-4-5")
    assert price_of("claude-opus-9") == price_of("something-opus")
    assert cost("unknown", 1000, 0) == 0.003


def test_local_stream_keeps_only_the_last_attempt(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "r.db"))
    for chunk in ("Hel",):
        backend.append_chunk("t1", chunk)
    backend.restart_chunks("t1")
    for chunk in ("Hel", "lo"):
        backend.append_chunk("t1", chunk)
    backend.store_many([ResultRecord("t1", SUCCESS, "Hello")])
    assert list(backend.stream("t1", timeout=1)) == ["Hel", "lo"]


def test_local_stream_marks_a_restart_seen_live(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "r.db"))
    backend.append_chunk("t2", "Hel")
    seen: list[object] = []
    first = threading.Event()

    def read() -> None:
        for chunk in backend.stream("t2", timeout=10):
            seen.append(chunk)
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(5)
    backend.restart_chunks("t2")
    backend.append_chunk("t2", "Hel")
    backend.append_chunk("t2", "lo")
    backend.store_many([ResultRecord("t2", SUCCESS, "Hello")])
    reader.join(10)
    assert seen[0] == "Hel" and isinstance(seen[1], StreamRestart) and seen[2:] == ["Hel", "lo"]


def test_startup_checks_run_only_for_the_tasks_a_worker_consumes() -> None:
    from taskq import Taskq

    app = Taskq("checks", broker="kafka://127.0.0.1:1", backend="redis://127.0.0.1:1/0")

    @app.task(name="a")
    def a() -> None: ...

    @app.task(name="b")
    def b() -> None: ...

    def fail() -> None:
        raise ConfigError("set ANTHROPIC_API_KEY")

    app.add_startup_check(fail, ["a"])
    app.run_startup_checks(["b"])
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        app.run_startup_checks(["a", "b"])
    with pytest.raises(ConfigError):
        app.run_startup_checks()


def test_sharded_pool_keeps_the_connection_limit_and_balances() -> None:
    """The SDK client's pool in shards: the limit holds in total, answers are whole, every shard's count of
    open answers is back to zero once the bodies are closed."""
    import asyncio

    from taskq.devtools.llm_server import LLMServer
    from taskq.llm.client import LLMClients

    async def run(url: str) -> None:
        client = LLMClients(LLMConfig("k", url, max_connections=100)).get()
        transport = client._client._transport
        assert len(transport.shards) == 3
        assert sum(t._pool._max_connections for t in transport.shards) == 100

        async def one(i: int) -> str:
            async with client.messages.stream(model="claude-haiku-4-5", max_tokens=8,
                                              messages=[{"role": "user", "content": f"q{i}"}]) as stream:
                return "".join([text async for text in stream.text_stream])

        answers = await asyncio.gather(*[one(i) for i in range(150)])
        assert all(answers) and transport.open == [0, 0, 0]
        await client.close()

    with LLMServer(latency=0.05) as server:
        asyncio.run(run(server.url))
        assert 50 < server.standin.peak_active <= 100, "calls ran side by side, never more than the limit"
