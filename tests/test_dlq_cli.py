"""``taskq dlq ls|show|replay|purge`` on real dead letters (embedded broker)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from taskq.cli import main
from tests.support import local_app_module, worker_thread

APP = "tests.apps.dlqapp"
TASK = "tests.apps.dlqapp.flaky"


@pytest.fixture
def dlqapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = local_app_module(APP, str(tmp_path / "q.db"), monkeypatch, DLQ_MARKER=str(tmp_path / "ready"))
    yield module
    module.app.close()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_show_replay_purge(dlqapp: ModuleType, tmp_path: Path) -> None:
    app, flaky = dlqapp.app, dlqapp.flaky
    with worker_thread(app, concurrency=2):
        failed = [flaky.delay(i, user="ann") for i in range(3)]
        for result in failed:
            with pytest.raises(ValueError):
                result.get(timeout=20)
        listing = cli("dlq", "ls", "-A", APP, TASK)
        assert set(re.findall(r"[0-9a-f]{32}", listing)) == {r.id for r in failed}
        shown = cli("dlq", "show", "-A", APP, TASK, failed[0].id)
        assert "ValueError: not yet: 0" in shown and "key=b'ann'" in shown and "Traceback" in shown

        assert "would replay 1" in cli("dlq", "replay", "-A", APP, TASK, "--id", failed[0].id, "--dry-run")
        assert failed[0].status == "FAILURE"  # a dry run changes nothing

        (tmp_path / "ready").touch()
        cli("dlq", "replay", "-A", APP, TASK, "--id", failed[0].id)
        assert app.AsyncResult(failed[0].id).get(timeout=20) == 0  # same id, run again
        assert app.AsyncResult(failed[1].id).status == "FAILURE"  # only the one named

        cli("dlq", "replay", "-A", APP, TASK, "--all")
        assert [app.AsyncResult(r.id).get(timeout=20) for r in failed] == [0, 10, 20]

    assert "purged 3" in cli("dlq", "purge", "-A", APP, TASK, "--yes")
    assert not re.findall(r"[0-9a-f]{32}", cli("dlq", "ls", "-A", APP, TASK))


def test_a_letter_whose_task_has_since_succeeded_is_not_replayed_again(dlqapp: ModuleType, tmp_path: Path) -> None:
    """Dead letters stay after a replay: a second ``replay --all`` (or a second click in the monitor) removed the
    SUCCESS of every task replayed before and ran each of them again."""
    app, flaky = dlqapp.app, dlqapp.flaky
    with worker_thread(app, concurrency=2):
        failed = flaky.delay(4, user="ann")
        with pytest.raises(ValueError):
            failed.get(timeout=20)
        (tmp_path / "ready").touch()
        assert "replayed 1" in cli("dlq", "replay", "-A", APP, TASK, "--all")
        assert app.AsyncResult(failed.id).get(timeout=20) == 40
    out = cli("dlq", "replay", "-A", APP, TASK, "--all")
    assert "replayed 0" in out and "left 1 already succeeded or in progress" in out
    assert app.AsyncResult(failed.id).status == "SUCCESS"  # kept, so no worker runs it again


def test_replay_needs_ids_or_all_and_names_unknown_ids(dlqapp: ModuleType) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["dlq", "replay", "-A", APP, TASK])
    assert result.exit_code != 0 and "--id" in result.output
    result = runner.invoke(main, ["dlq", "replay", "-A", APP, TASK, "--id", "nope"])
    assert result.exit_code != 0 and "nope" in result.output


def test_what_a_task_was_given_cannot_drive_the_terminal(dlqapp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task's argument ends in its error message: escape sequences (clear the screen, retitle the window) and
    rich markup reach ``dlq ls`` and ``dlq show`` as visible text, not as commands to the terminal."""
    evil = "\x1b[2J\x1b]0;pwned\x07[bold]x[/bold]"
    with worker_thread(dlqapp.app, concurrency=1):
        failed = dlqapp.flaky.delay(evil, user="\x1b[31mred")
        with pytest.raises(ValueError):
            failed.get(timeout=20)
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping in the table
    listing = cli("dlq", "ls", "-A", APP, TASK)
    shown = cli("dlq", "show", "-A", APP, TASK, failed.id)
    for out in (listing, shown):
        assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "not yet: \\x1b[2J\\x1b]0;pwned\\x07[bold]x[/bold]" in shown
    assert "not yet: \\x1b[2J\\x1b]0;pwned\\x07[bold]x[/bold]" in listing


def test_replaying_a_chain_step_runs_the_rest_of_the_chain(dlqapp: ModuleType, tmp_path: Path) -> None:
    """The dead-lettered step's failure had failed the steps after it; a replay that only forgot the
    step's own result ran the step, but the next step (same id) was skipped as finished and the chain's
    result kept the old failure."""
    from taskq.canvas import chain

    app, flaky = dlqapp.app, dlqapp.flaky
    with worker_thread(app, concurrency=2):
        workflow = chain(flaky.si(1, user="ann"), flaky.s(user="ann"))
        result = workflow.apply_async()
        for failed in (result, app.AsyncResult(workflow.tasks[0].id)):  # the step's own FAILURE: its letter is out
            with pytest.raises(ValueError, match="not yet: 1"):
                failed.get(timeout=20)
        (tmp_path / "ready").touch()
        cli("dlq", "replay", "-A", APP, TASK, "--id", workflow.tasks[0].id)
        assert app.AsyncResult(result.id).get(timeout=20) == 100  # a fresh handle: ``result`` keeps its final record
