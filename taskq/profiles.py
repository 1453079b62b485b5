"""Worker profiles: TOML files that say which topics a worker pool consumes and how it runs them.

``taskq worker -A tasks.app --profile embed`` reads ``workers/embed.toml`` (from the current
directory; a path to a ``.toml`` file works too). Options given on the command line win over the file.

    pool = "processes"          # threads | processes | asyncio
    concurrency = 2             # tasks (or batches) at once
    topics = ["tasks.rag.embed"]  # task names or topics, like -Q
    batch_size = 32             # records per call of a batch task (overrides the task's own)
    batch_wait = 0.05           # seconds to wait to fill a batch
    fetch = 500                 # records fetched per poll (--batch-size)
    prefetch = 256              # records taken but unfinished at most
    group = "agents.coder"      # the pool's own consumer group (else TASKQ_GROUP or taskq.<app>)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from taskq.errors import ConfigError

PROFILE_DIR = Path("workers")


@dataclass(frozen=True)
class Profile:
    """One pool's worker settings; None means "not set here"."""

    name: str
    pool: str | None = None
    concurrency: int | None = None
    topics: tuple[str, ...] = ()
    batch_size: int | None = None
    batch_wait: float | None = None
    fetch: int | None = None
    prefetch: int | None = None
    group: str | None = None  # consumer group of this pool (sets TASKQ_GROUP for the worker)
    description: str = ""


def find_profile(name: str, directory: Path = PROFILE_DIR) -> Path:
    """The file of profile ``name``: a path to a .toml file, or ``<directory>/<name>.toml``."""
    as_path = Path(name)
    if as_path.suffix == ".toml" and as_path.is_file():
        return as_path
    candidate = directory / f"{name}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []
    raise ConfigError(f"no worker profile {name!r}: looked for {candidate.resolve()}"
                      + (f"; profiles there: {', '.join(known)}" if known else
                         "; run from the project directory or pass a path to a .toml file"))


def load_profile(name: str, directory: Path = PROFILE_DIR) -> Profile:
    """Read and check a profile; an unknown key or a wrong type is an error that names it."""
    import tomllib  # here, not at the top: `taskq worker` without --profile does not read TOML

    path = find_profile(name, directory)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read worker profile {path}: {exc}") from exc
    allowed = {f.name: f for f in fields(Profile) if f.name != "name"}
    for key in data:
        if key not in allowed:
            import difflib

            hint = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"unknown key {key!r} in worker profile {path}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "topics":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise ConfigError(f"topics in {path} must be a list of task names or topics")
            value = tuple(value)
        elif key in ("concurrency", "batch_size", "fetch", "prefetch"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} in {path} must be a positive integer, not {value!r}")
        elif key == "batch_wait":
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"batch_wait in {path} must be seconds >= 0, not {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{key} in {path} must be a string, not {value!r}")
        values[key] = value
    return Profile(name=path.stem, **values)


@dataclass(frozen=True)
class WorkerOptions:
    """What ``taskq worker`` runs with: command-line values, else the profile's, else the defaults."""

    queues: tuple[str, ...] = ()
    pool: str = "threads"
    concurrency: int = 8
    fetch: int = 1000
    prefetch: int | None = None
    task_batch_size: int | None = None
    task_batch_wait: float | None = None
    group: str | None = None


def worker_options(profile: Profile | None, *, queues: tuple[str, ...] = (), pool: str | None = None,
                   concurrency: int | None = None, fetch: int | None = None, prefetch: int | None = None,
                   task_batch_size: int | None = None, task_batch_wait: float | None = None) -> WorkerOptions:
    """Merge command-line options (None = not given) over ``profile`` over the defaults."""
    p = profile or Profile(name="")
    d = WorkerOptions()

    def pick(cli: Any, prof: Any, default: Any) -> Any:
        return cli if cli is not None else prof if prof is not None else default

    return WorkerOptions(
        queues=queues or p.topics,
        pool=pick(pool, p.pool, d.pool),
        concurrency=pick(concurrency, p.concurrency, d.concurrency),
        fetch=pick(fetch, p.fetch, d.fetch),
        prefetch=pick(prefetch, p.prefetch, d.prefetch),
        task_batch_size=pick(task_batch_size, p.batch_size, d.task_batch_size),
        task_batch_wait=pick(task_batch_wait, p.batch_wait, d.task_batch_wait),
        group=p.group,
    )


def expand_queues(task_names: list[str], topics: list[str], patterns: tuple[str, ...]) -> list[str]:
    """Task names or topics matching ``patterns`` (shell-style, ``tasks.rag.*``), in pattern order.

    A name that is neither a task nor a topic, or a wildcard pattern that matches nothing, is an error
    naming the app's tasks, so a profile or ``-Q`` cannot silently consume nothing.
    """
    import fnmatch

    chosen: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            matched = [pattern] if pattern in task_names or pattern in topics else []
        else:
            matched = [n for n in task_names if fnmatch.fnmatchcase(n, pattern)]
            matched += [t for t in topics if fnmatch.fnmatchcase(t, pattern) and t not in matched]
        if not matched:
            raise ConfigError(f"no task or topic matches {pattern!r}; tasks: {', '.join(sorted(task_names))}")
        chosen += [m for m in matched if m not in chosen]
    return chosen
