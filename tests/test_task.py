"""Unit tests (no Kafka, no Redis): Task registration, names, options and key selection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskq import ConfigError, SerializationError, Taskq
from taskq.errors import NotRegistered
from taskq.message import TaskMessage
from taskq.retry import RetryPolicy
from tests.support import read_records
from tests.unit_support import app  # noqa: F401 - a fixture


def test_task_default_name_of_nested_function_is_not_a_topic(app: Taskq) -> None:
    def nested() -> None: ...

    # module.qualname contains '<locals>', which Kafka topic names do not allow
    with pytest.raises(ConfigError, match="<locals>"):
        app.task(nested)
    assert app.task(name="u.nested")(nested).name == "u.nested"


def test_task_default_name_module_level(app: Taskq) -> None:
    task = app.task(_module_level_fn)
    assert task.name == f"{_module_level_fn.__module__}._module_level_fn"
    assert task.topic == f"taskq.{task.name}"
    assert app.get_task(task.name) is task
    assert task(2) == 4  # calling runs locally


def _module_level_fn(x: int) -> int:
    return x * 2


@pytest.mark.parametrize("bad", ["has space", "slash/name", "ü", "x" * 300])
def test_task_invalid_topic_name(app: Taskq, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid Kafka topic"):
        app.task(name=bad)(_module_level_fn)
    assert bad not in app.tasks


def test_task_unknown_option(app: Taskq) -> None:
    with pytest.raises(ConfigError) as info:
        app.task(name="u.opt", retries=3)(_module_level_fn)
    assert "retries" in str(info.value) and "u.opt" in str(info.value)


def test_task_duplicate_name(app: Taskq) -> None:
    def one() -> int:
        return 1

    def two() -> int:
        return 2

    first = app.task(name="u.dup")(one)
    assert app.task(name="u.dup")(one).fn is first.fn  # the same function again is fine
    with pytest.raises(ConfigError, match="registered twice"):
        app.task(name="u.dup")(two)
    assert app.tasks["u.dup"].fn is one


def test_task_retry_options_and_unknown_lookup(app: Taskq) -> None:
    task = app.task(name="u.r", max_retries=7, retry_backoff=2, autoretry_for=(OSError,))(_module_level_fn)
    assert task.retry_policy == RetryPolicy(max_retries=7, retry_backoff=2, autoretry_for=(OSError,))
    default = app.task(name="u.d")(_module_level_fn)
    assert default.retry_policy.max_retries == app.settings.default_max_retries
    with pytest.raises(NotRegistered):
        app.get_task("u.missing")


@pytest.mark.parametrize("max_retries", [None, -1, 2.5, "3"])
def test_max_retries_that_is_not_a_count_is_refused_at_the_task(app: Taskq, max_retries: object) -> None:
    """Celery reads max_retries=None as "retry forever"; here the first failure compared None with an int
    in the worker's pool thread, which died with it and left the task PENDING and its offset uncommitted."""
    with pytest.raises(ConfigError, match="max_retries"):
        app.task(name="u.forever", max_retries=max_retries)(_module_level_fn)


@pytest.mark.parametrize("rate", ["0/s", "5/0s", "10/0m", "10/ms", "1e3/s"])
def test_rate_limit_that_limits_nothing_or_cannot_be_read_is_refused(app: Taskq, rate: str) -> None:
    """"5/0s" read as five per zero seconds: an interval of 0, no limit at all, silently."""
    with pytest.raises(ConfigError, match="rate limit"):
        app.task(name="u.limited", rate_limit=rate)(_module_level_fn)


@pytest.mark.parametrize("option", ["time_limit", "soft_time_limit"])
@pytest.mark.parametrize("limit", ["30", 0, -1, float("nan"), float("inf"), True])
def test_time_limit_that_is_not_a_positive_number_is_refused_at_the_task(app: Taskq, option: str,
                                                                         limit: object) -> None:
    """"30" raised TypeError in the threads pool's watchdog thread (no limit held for any task after it) and
    in the processes pool's feeder; 0 or less ended every run at once; NaN never ended one."""
    with pytest.raises(ConfigError, match=option):
        app.task(name="u.limited", **{option: limit})(_module_level_fn)


def test_apply_async_key_selection(app: Taskq) -> None:
    @app.task(name="u.keyed", key="user_id", partitions=3)
    def keyed(prompt: str, user_id: str | int = "") -> str:
        return prompt

    r_explicit = keyed.apply_async(("p",), {"user_id": "u1"}, key="explicit")
    r_kwarg = keyed.apply_async(("p",), {"user_id": "u1"})
    r_int = keyed.delay("p", user_id=42)
    r_bytes = keyed.apply_async(("p",), key=b"raw-bytes")
    r_positional = keyed.apply_async(("p", "u2"))  # the key parameter given positionally
    r_missing = keyed.apply_async(("p",))  # no key value at all: the task id
    r_id = keyed.apply_async(("p",), task_id="fixed-id")
    r_both = keyed.apply_async(("p", "u3"), key="explicit2")
    r_empty = keyed.apply_async(("p",), key="")  # an empty key is a key, as text or bytes
    r_empty_bytes = keyed.apply_async(("p",), key=b"")
    app.flush()
    records = {r.header("id").decode(): r for r in read_records(app, keyed.topic, 10)}  # type: ignore[union-attr]
    assert len(records) == 10
    assert records[r_empty.id].key == records[r_empty_bytes.id].key == b""
    assert records[r_explicit.id].key == b"explicit"
    assert records[r_kwarg.id].key == b"u1"
    assert records[r_int.id].key == b"42"
    assert records[r_bytes.id].key == b"raw-bytes"
    assert records[r_positional.id].key == b"u2"
    assert records[r_missing.id].key == r_missing.id.encode()
    assert records[r_both.id].key == b"explicit2"
    assert r_id.id == "fixed-id" and records["fixed-id"].key == b"fixed-id"
    # same key -> same partition (ordering per key)
    assert records[r_kwarg.id].partition == _read_partition_for(b"u1", 3)
    decoded = TaskMessage.decode(records[r_int.id], app.serializers)
    assert decoded.args == ["p"] and decoded.kwargs == {"user_id": 42} and decoded.task == "u.keyed"


def test_task_key_must_name_a_parameter(app: Taskq) -> None:
    with pytest.raises(ConfigError, match="user_id"):
        app.task(name="u.nokey", key="user_id")(_module_level_fn)


def test_bound_task_positional_key(app: Taskq) -> None:
    @app.task(name="u.boundkey", bind=True, key="user")
    def bound(self: object, user: str) -> str:
        return user

    result = bound.delay("alice")
    app.flush()
    [record] = read_records(app, bound.topic, 1)
    assert record.key == b"alice" and record.header("id") == result.id.encode()


def _read_partition_for(key: bytes, partitions: int) -> int:
    from taskq.partitioner import partition_for

    return partition_for(key, partitions)


def test_apply_async_countdown_goes_to_delay_tier(app: Taskq) -> None:
    @app.task(name="u.later")
    def later() -> None: ...

    result = later.apply_async(countdown=5, headers={"trace": "t1"})
    app.flush()
    assert app.delay_topic(5) == f"{app.group}.delay.10s"
    [record] = read_records(app, app.delay_topic(5), 1)
    assert record.header("origin-topic") == later.topic.encode()
    assert record.header("x-trace") == b"t1"
    assert float(record.header("eta") or 0) == pytest.approx(time.time() + 5, abs=2)
    assert record.header("id") == result.id.encode()
    with pytest.raises(ConfigError):
        later.apply_async(countdown=1, eta=time.time() + 1)


@pytest.mark.parametrize("options,fragment", [
    ({"countdown": float("nan")}, "countdown must be a finite number"),
    ({"countdown": float("inf")}, "countdown must be a finite number"),
    ({"countdown": "5"}, "countdown must be a finite number"),
    ({"eta": float("nan")}, "eta must be a finite number"),
    ({"eta": float("inf")}, "eta must be a finite number"),
    ({"eta": "2030-01-01"}, "eta must be a finite number of seconds or a datetime"),
    ({"headers": {"retries": 3}}, "header 'retries'"),
    ({"headers": {"trace": None}}, "header 'trace'"),
    ({"headers": {1: "x"}}, "header 1"),
    ({"task_id": 7}, "task_id must be a str"),
    ({"args": "abc"}, "args must be a list or tuple, not str"),
    ({"kwargs": [1]}, "kwargs must be a dict, not list"),
    ({"priority": "0"}, "priorities 0-0 .*not '0'"),
    ({"priority": 0.5}, "priorities 0-0 .*not 0.5"),
])
def test_apply_async_refuses_bad_options_at_the_call(app: Taskq, options: dict, fragment: str) -> None:
    """Each used to be sent (NaN: at once; inf: never due; wrong kwargs: dead-lettered by the worker) or
    to fail deep in the client with an AttributeError or TypeError."""
    @app.task(name="u.opts")
    def opts(*args: object, **kwargs: object) -> None: ...

    with pytest.raises(ConfigError, match=fragment):
        opts.apply_async(**options)
    if "args" not in options and "kwargs" not in options:  # the same options on a signature, and in a chain
        with pytest.raises(ConfigError, match=fragment):
            opts.s().set(**options).apply_async()
        with pytest.raises(ConfigError, match=fragment):
            opts.s().set(**options, link=opts.s()).apply_async()
    app.flush()
    assert read_records(app, opts.topic, 1, timeout=0.5) == []


def test_apply_async_accepts_what_celery_callers_pass(app: Taskq) -> None:
    """None for args, kwargs and priority (Celery's defaults), an int key, a countdown in the past."""
    @app.task(name="u.lenient")
    def lenient(*args: object, **kwargs: object) -> None: ...

    sent = [lenient.apply_async(None, None, priority=None, key=42), lenient.apply_async(countdown=-5),
            lenient.apply_async((1,), eta=0.0)]
    app.flush()
    records = {r.header("id"): r for r in read_records(app, lenient.topic, 3)}
    assert records[sent[0].id.encode()].key == b"42"
    assert set(records) == {r.id.encode() for r in sent}


def test_a_retry_countdown_that_never_comes_is_refused() -> None:
    from taskq.errors import Retry

    for countdown in (float("inf"), float("nan"), "soon"):
        with pytest.raises(ConfigError, match="retry countdown must be a finite number"):
            Retry(None, countdown)  # type: ignore[arg-type]
    assert Retry(None, 2.5).countdown == 2.5


@pytest.mark.parametrize("first,second,priorities", [("u.a_b", "u.a.b", 1), ("u.a.b", "u_a_b", 1),
                                                      ("u.level", "u.level.p1", 2)])
def test_task_names_that_would_share_a_topic_are_refused(app: Taskq, first: str, second: str, priorities: int) -> None:
    """Kafka refuses a topic that differs from an existing one only in '.' against '_' (or creates both
    when asked in one request); a priority level's topic can equal another task's."""
    app.task(name=first, priorities=priorities)(_module_level_fn)
    with pytest.raises(ConfigError, match=f"task {second!r} and task {first!r} would share a Kafka topic"):
        app.task(name=second)(_module_level_fn)
    assert second not in app.tasks
    assert app.task(name=first, priorities=priorities)(_module_level_fn).name == first  # the same again is fine


def test_task_name_whose_dead_letter_topic_is_too_long(app: Taskq) -> None:
    """The topic fits in Kafka's 249 characters but '<topic>.dlq' does not: the worker could not start."""
    longest = "n" * (249 - len("taskq.") - len(".dlq"))
    assert app.task(name=longest)(_module_level_fn).topic == f"taskq.{longest}"
    with pytest.raises(ConfigError, match="dead-letter topic .* longer than 249"):
        app.task(name=longest + "n")(_module_level_fn)


def test_a_serializer_the_apps_workers_refuse_is_a_config_error(tmp_path: Path) -> None:
    """Every message of such a task, or app, was dead-lettered by the app's own workers; an unknown name in
    accept_content was a bare KeyError."""
    app = Taskq("ser", local_path=str(tmp_path / "q.db"))
    with pytest.raises(ConfigError, match="task 'u.pickled' sends with serializer 'pickle'.*add 'pickle' to accept"):
        app.task(name="u.pickled", serializer="pickle")(_module_level_fn)
    assert "u.pickled" not in app.tasks
    with pytest.raises(ConfigError, match="app 'ser' sends with serializer 'pickle'"):
        Taskq("ser", local_path=str(tmp_path / "q.db"), serializer="pickle")
    for settings in ({"serializer": "yaml"}, {"accept_content": ["json", "yaml"]}):
        with pytest.raises(SerializationError, match="unknown serializer 'yaml'"):
            Taskq("ser", local_path=str(tmp_path / "q.db"), **settings)
    both = Taskq("ser", local_path=str(tmp_path / "q.db"), serializer="pickle", accept_content=["json", "pickle"])
    assert both.task(name="u.pickled")(_module_level_fn).serializer == "pickle"


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    ((1, 2, 3), {}, "too many positional arguments"),
    ((1,), {}, "missing a required argument: 'y'"),
    ((1,), {"x": 2}, "multiple values for argument 'x'"),
    ((1, 2), {"z": 3}, "got an unexpected keyword argument 'z'"),
])
def test_arguments_that_do_not_fit_are_refused_at_the_call(app: Taskq, args: tuple, kwargs: dict, error: str) -> None:
    """As in Celery: a call that does not fit the task's signature is Python's TypeError at the call, and
    nothing is sent (a worker would only fail it later); through a signature too."""
    from taskq.canvas import chain

    @app.task(name="u.add")
    def add(x: int, y: int) -> int:
        return x + y

    for send in (lambda: add.apply_async(args, kwargs), lambda: add.s(*args, **kwargs).delay()):
        with pytest.raises(TypeError, match=f"task 'u.add': {error}"):
            send()
    add.delay(1, y=2)
    chain(add.s(1, 2), add.s(3)).delay()  # a partial signature still chains: its first argument comes later
    app.flush()
    records = read_records(app, add.topic, 3, timeout=1.0)  # only the two good calls were sent
    sent = [TaskMessage.decode(r, app.serializers) for r in records]
    assert sorted((m.args, sorted(m.kwargs.items())) for m in sent) == [([1], [("y", 2)]), ([1, 2], [])]


def test_arguments_of_bound_keyword_only_and_variadic_tasks(app: Taskq) -> None:
    @app.task(name="u.bound", bind=True)
    def bound(self: object, x: int, *, flag: bool, scale: int = 1) -> int:
        return x

    @app.task(name="u.any")
    def anything(*args: object, **kwargs: object) -> None: ...

    bound.delay(1, flag=True)
    anything.delay(1, 2, 3, a=4)
    with pytest.raises(TypeError, match="missing a required argument: 'flag'"):
        bound.delay(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        bound.delay(1, 2, flag=True)


def test_a_naive_eta_is_utc_as_in_celery(app: Taskq, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eta=datetime.utcnow() + ...`` (Celery's idiom) is due then on a machine of any time zone; an aware
    eta is taken as it is, on a task and on a signature."""
    from datetime import datetime, timedelta, timezone

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        @app.task(name="u.later")
        def later() -> None: ...

        due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=5)
        for eta in (due.replace(tzinfo=None), due, due.astimezone(timezone(timedelta(hours=9)))):
            assert later.message(eta=eta).eta == due.timestamp()
            assert later.s().set(eta=eta).options["eta"] == due.timestamp()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
