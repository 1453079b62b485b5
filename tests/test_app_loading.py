"""``-A``: loading an app by Celery's forms ``module``, ``module.attribute`` and ``module:attribute``."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from taskq import ConfigError, Taskq
from taskq.app import load_app
from taskq.cli import main
from tests.support import ROOT


def write_module(root: Path, body: str, package: bool = False) -> str:
    """A fresh module (or ``<pkg>.tasks`` in a fresh package) under ``root``; returns its import name."""
    name = f"loadme_{uuid.uuid4().hex[:10]}"
    if package:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
        (root / name / "tasks.py").write_text(body)
        return f"{name}.tasks"
    (root / f"{name}.py").write_text(body)
    return name


APP = "from taskq import Taskq\napp = Taskq('loaded', local_path={path!r})\n"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("package", [False, True], ids=["single-file module", "module in a package"])
def test_every_celery_form_finds_the_same_app(root: Path, package: bool) -> None:
    module = write_module(root, APP.format(path=str(root / "q.db")), package)
    app = load_app(module)
    assert isinstance(app, Taskq) and app.name == "loaded"
    assert load_app(f"{module}.app") is app  # failed with "not a package" for a single-file module
    assert load_app(f"{module}:app") is app


def test_module_with_one_app_under_another_name(root: Path) -> None:
    module = write_module(root, "from taskq import Taskq\nshop = Taskq('shop')\nOTHER = 3\n")
    app = load_app(module)
    assert app.name == "shop"
    assert load_app(f"{module}.shop") is app and load_app(f"{module}:shop") is app


def test_package_attribute_that_is_a_module(root: Path) -> None:
    module = write_module(root, APP.format(path=str(root / "q.db")), package=True)
    package = module.split(".")[0]
    assert load_app(f"{package}:tasks") is load_app(module)


@pytest.mark.parametrize("body,spec_suffix,fragment", [
    ("x = 1\n", "", "has no Taskq app"),
    ("from taskq import Taskq\na = Taskq('a')\nb = Taskq('b')\n", "", "several Taskq apps (a, b)"),
    ("x = 1\n", ".nothing", "is nothing, not a Taskq app"),
    ("x = 1\n", ":x", "is a int, not a Taskq app"),
    ("import no_such_dependency_zz\n", "", "No module named 'no_such_dependency_zz'"),
], ids=["no app", "two apps", "missing attribute", "not an app", "broken import"])
def test_clear_errors_name_the_spec(root: Path, body: str, spec_suffix: str, fragment: str) -> None:
    spec = write_module(root, body) + spec_suffix
    with pytest.raises(ConfigError) as info:
        load_app(spec)
    assert repr(spec) in str(info.value) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("spec", ["no_such_module_zz", "no_such_module_zz.app", "no_such_module_zz:app"])
def test_missing_module(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot load app '{spec}'"):
        load_app(spec)


def test_cli_accepts_module_attribute_for_a_single_file_module(root: Path) -> None:
    module = write_module(root, APP.format(path=str(root / "q.db")))
    result = CliRunner().invoke(main, ["dlq", "ls", "-A", f"{module}.app", "some.task"])
    assert result.exit_code == 0, result.output
    assert "0 dead letter(s) of some.task" in result.output


def test_cli_loads_the_monitor_only_for_its_commands() -> None:
    """``import taskq.cli`` (every ``taskq`` command) imports neither the monitor nor its web stack;
    ``taskq monitor`` and ``taskq flower`` are still listed and run."""
    code = ("import sys, taskq.cli; print(sorted(m for m in sys.modules "
            "if m.startswith('taskq.monitor') or m.split('.')[0] in {'starlette', 'fastapi', 'uvicorn', 'jinja2'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    listed = CliRunner().invoke(main, ["--help"])
    assert "monitor " in listed.output and "flower " in listed.output
    for command in ("monitor", "flower"):
        shown = CliRunner().invoke(main, [command, "--help"])
        assert shown.exit_code == 0 and f"Usage: main {command}" in shown.output, shown.output


def test_import_taskq_leaves_the_worker_unimported() -> None:
    """A script that only sends tasks does not pay for importing the worker; ``taskq.Worker`` still works."""
    code = ("import sys, taskq; assert 'taskq.worker' not in sys.modules, 'worker imported';"
            "from taskq import Worker; from taskq.worker import Worker as W; assert Worker is W is taskq.Worker")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_wheel_installs_the_taskq_package_only(tmp_path: Path) -> None:
    """No top-level ``tasks`` or ``monitor`` to collide with a project's own modules: the monitor ships as
    ``taskq.monitor`` (with its templates and assets), and every package folder is in the wheel."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("taskq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"taskq"}
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "taskq").rglob("__init__.py")}
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == folders | {"taskq.monitor"}
    assert "taskq/monitor/templates/overview.html" in names and any(n.startswith("taskq/monitor/static/")
                                                                    for n in names)


def _commands(group: click.Group, ctx: click.Context, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, ctx, f"{prefix}{name} ")


def test_every_commands_app_option_names_the_three_forms() -> None:
    """Every ``-A`` takes ``module``, ``module.attribute`` and ``module:attribute`` (one loader); the help of
    nine commands named only two of them."""
    ctx = click.Context(main)
    checked = []
    for name, command in _commands(main, ctx):
        for param in command.params:
            if "-A" in getattr(param, "opts", ()) and name != "demo agents":
                assert "module, module.attribute or module:attribute" in (param.help or ""), (name, param.help)
                checked.append(name)
    assert {"worker", "beat", "topics", "usage", "events", "monitor", "flower", "dlq ls"} <= set(checked)


def test_topics_alter_shows_its_help_and_takes_the_app_after_its_name(root: Path) -> None:
    """``taskq topics alter --help`` said "Missing option '-A'", and so did ``taskq topics alter -A app ...``
    (Celery's habit: options after the command): -A was only taken before ``alter``."""
    shown = CliRunner().invoke(main, ["topics", "alter", "--help"])
    assert shown.exit_code == 0 and "--partitions" in shown.output, shown.output
    module = write_module(root, APP.format(path=str(root / "q.db")))
    missing = CliRunner().invoke(main, ["topics", "alter", "-A", module, "no.such.task", "--partitions", "2"])
    assert "Missing option" not in missing.output and "no.such.task" in missing.output, missing.output
    for argv in (["topics"], ["topics", "alter", "no.such.task", "--partitions", "2"]):
        refused = CliRunner().invoke(main, argv)
        assert refused.exit_code == 2 and "Missing option '-A' / '--app'" in refused.output, refused.output


def test_flower_without_its_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the flower extra ``taskq flower`` ended in a traceback (celery is imported by the bridge);
    like ``taskq monitor`` it names the extra to install."""
    monkeypatch.setitem(sys.modules, "celery", None)  # "import celery" raises ImportError
    result = CliRunner().invoke(main, ["flower", "--broker", "redis://127.0.0.1:1/1"])
    assert result.exit_code == 1 and not isinstance(result.exception, ImportError), result.exception
    assert "taskq[flower]" in result.output, result.output


@pytest.mark.parametrize("path,module", [("tasks.py", "tasks"), ("shop/tasks.py", "shop.tasks"),
                                         ("./shop/tasks.py", "shop.tasks")])
def test_a_file_path_is_refused_with_the_module_name_to_use(path: str, module: str) -> None:
    """``-A tasks.py`` (a file, where Celery's -A takes a module) said "tasks.py is nothing, not a Taskq app"
    after running the module; ``-A shop/tasks.py`` said "No module named 'shop/tasks'"."""
    with pytest.raises(ConfigError) as info:
        load_app(path)
    assert f"-A {module}" in str(info.value), str(info.value)
