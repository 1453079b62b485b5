"""Worker profiles (workers/*.toml) and ``taskq worker --profile``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from taskq import ConfigError
from taskq.cli import main
from taskq.profiles import expand_queues, load_profile, worker_options

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_profiles_load_and_name_real_tasks() -> None:
    from tasks.app import app

    names = list(app.tasks)
    topics = [t.topic for t in app.tasks.values()]
    embed = load_profile("embed", ROOT / "workers")
    assert (embed.pool, embed.concurrency, embed.batch_size, embed.batch_wait) == ("processes", 2, 32, 0.05)
    assert expand_queues(names, topics, embed.topics) == ["tasks.rag.embed"]
    llm = load_profile("llm", ROOT / "workers")
    assert llm.pool == "asyncio" and llm.concurrency >= 32
    assert expand_queues(names, topics, llm.topics) == ["tasks.llm.infer"]
    agents = load_profile(str(ROOT / "workers" / "agents.toml"))
    assert agents.pool == "threads" and "tasks.rag.upsert" in agents.topics


def test_profile_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('pool = "threads"\nconcurency = 4\n')
    with pytest.raises(ConfigError, match="did you mean 'concurrency'"):
        load_profile("bad", tmp_path)
    (tmp_path / "neg.toml").write_text("batch_size = 0\n")
    with pytest.raises(ConfigError, match="positive integer"):
        load_profile("neg", tmp_path)
    with pytest.raises(ConfigError, match="profiles there: bad, neg"):
        load_profile("missing", tmp_path)
    with pytest.raises(ConfigError, match="no task or topic matches"):
        expand_queues(["a.b"], ["taskq.a.b"], ("c.*",))


def test_command_line_wins_over_profile() -> None:
    embed = load_profile("embed", ROOT / "workers")
    merged = worker_options(embed, concurrency=1, pool="threads")
    assert (merged.pool, merged.concurrency, merged.task_batch_size, merged.queues) == (
        "threads", 1, 32, ("tasks.rag.embed",))
    assert worker_options(None).pool == "threads" and worker_options(None).task_batch_size is None


def test_worker_command_reports_an_unknown_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["worker", "-A", "tasks.app", "--profile", "nope"])
    assert result.exit_code != 0 and "no worker profile 'nope'" in result.output


def test_agent_pools_have_their_own_consumer_groups() -> None:
    from tasks.app import app

    names, topics = list(app.tasks), [t.topic for t in app.tasks.values()]
    groups = set()
    for pool, tasks in (("planner", ["tasks.agents.plan", "tasks.agents.gather"]),
                        ("research", ["tasks.agents.research"]), ("coder", ["tasks.agents.coder"]),
                        ("reviewer", ["tasks.agents.reviewer"])):
        profile = load_profile(f"agents-{pool}", ROOT / "workers")
        assert expand_queues(names, topics, profile.topics) == tasks
        assert worker_options(profile).group == profile.group
        groups.add(profile.group)
    assert len(groups) == 4


@pytest.mark.parametrize("value", ["0", "-1"])
def test_worker_command_refuses_a_prefetch_below_one(value: str) -> None:
    """A prefetch below 1 used to be taken: -1 made the fetch bound negative, so the worker joined its
    group, held its partitions and never fetched a record. As in a profile, it must be positive."""
    result = CliRunner().invoke(main, ["worker", "-A", "tests.apps.limits", "--prefetch", value])
    assert result.exit_code == 2
    assert "Invalid value for '--prefetch'" in result.output


@pytest.mark.parametrize("option,value", [("--stop-timeout", "nan"), ("--task-batch-wait", "nan"),
                                          ("--stop-timeout", "-1")])
def test_worker_command_refuses_a_wait_that_is_not_a_number_of_seconds(option: str, value: str) -> None:
    """click's FloatRange lets NaN through (every comparison with it is false): a NaN batch wait made the
    worker wait for ever to fill a batch."""
    result = CliRunner().invoke(main, ["worker", "-A", "tests.apps.limits", option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output


def test_worker_command_names_the_tasks_for_an_unknown_queue() -> None:
    """``-Q`` with a name that is neither a task nor a topic: a one-line error listing the app's tasks (it
    used to say "import the module that defines it (-A/--include)", an option taskq does not have)."""
    result = CliRunner().invoke(main, ["worker", "-A", "tests.apps.limits", "-Q", "tests.apps.limits.stuk"])
    assert result.exit_code == 1, result.output
    assert "'tests.apps.limits.stuk'" in result.output and "tests.apps.limits.stuck" in result.output
    assert "--include" not in result.output
