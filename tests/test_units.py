"""Fast unit tests: no Kafka, no Redis (a few use an embedded SQLite file in tmp_path)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskq import AsyncResult, ConfigError, Reject, SerializationError, TaskFailed, Taskq
from taskq.brokers.base import Record
from taskq.config import Settings
from taskq.errors import NotRegistered
from taskq.execution import Kind, run
from taskq.message import MalformedMessage, TaskMessage
from taskq.result import rebuild_exception
from taskq.results.base import FAILURE, SUCCESS, ResultRecord
from taskq.retry import RetryPolicy, tier_topic, tier_topics
from taskq.serialization import Registry
from taskq.worker import KeyedDispatcher, OffsetTracker
from tests.support import read_records

JSON_ONLY = Registry(("json",))


class CustomError(Exception):
    """Module-level, so a result naming ``test_units.CustomError`` can be rebuilt."""


# --------------------------------------------------------------------------- helpers


def as_record(value: bytes | None, headers: list[tuple[str, bytes]], topic: str = "t", partition: int = 0,
              offset: int = 0, key: bytes | None = b"k") -> Record:
    return Record(topic, partition, offset, key, value, headers)


def encoded(message: TaskMessage, registry: Registry = JSON_ONLY, serializer: str = "json", **kw: object) -> Record:
    value, headers = message.encode(registry, serializer)
    return as_record(value, headers, key=message.key, **kw)  # type: ignore[arg-type]


@pytest.fixture
def app(tmp_path: Path) -> Taskq:
    a = Taskq("units", local_path=str(tmp_path / "q.db"))
    yield a
    a.close()


# --------------------------------------------------------------------------- TaskMessage


def test_message_round_trip_keeps_every_field() -> None:
    msg = TaskMessage("id-1", "mod.fn", [1, "two", [3.5, None]], {"x": {"y": True}}, b"key-1", attempts=2,
                      first_failure=1700000000.25, eta=1700000100.5, headers={"trace": "abc", "tenant": "t1"})
    back = TaskMessage.decode(encoded(msg), JSON_ONLY)
    assert back == msg


def test_message_round_trip_defaults_omit_optional_headers() -> None:
    msg = TaskMessage("id-2", "mod.fn", [], {}, b"k")
    value, headers = msg.encode(JSON_ONLY)
    names = [h for h, _ in headers]
    assert names == ["id", "task", "content-type"]
    back = TaskMessage.decode(as_record(value, headers), JSON_ONLY)
    assert (back.attempts, back.first_failure, back.eta, back.headers) == (0, None, None, {})


@pytest.mark.parametrize("drop", ["id", "task"])
def test_message_missing_required_header(drop: str) -> None:
    value, headers = TaskMessage("i", "t", [1], {}).encode(JSON_ONLY)
    headers = [(h, v) for h, v in headers if h != drop]
    with pytest.raises(MalformedMessage, match=f"missing header '{drop}'"):
        TaskMessage.decode(as_record(value, headers), JSON_ONLY)


def test_message_no_headers_at_all() -> None:
    with pytest.raises(MalformedMessage, match="missing header"):
        TaskMessage.decode(as_record(b"[[],{}]", []), JSON_ONLY)


@pytest.mark.parametrize("attempts", [b"three", b"", b"1.5", b"\xff"])
def test_message_bad_attempts_header(attempts: bytes) -> None:
    value, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match="bad header"):
        TaskMessage.decode(as_record(value, headers + [("attempts", attempts)]), JSON_ONLY)


def test_message_bad_eta_header() -> None:
    value, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage):
        TaskMessage.decode(as_record(value, headers + [("eta", b"tomorrow")]), JSON_ONLY)


@pytest.mark.parametrize("body", [b'{"args": []}', b"[1, 2]", b"[[1], {}, 3]", b'[{}, {}]', b"[[1], [2]]",
                                  b'"text"', b"null"])
def test_message_body_must_be_args_kwargs(body: bytes) -> None:
    _, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match=r"\[args, kwargs\]"):
        TaskMessage.decode(as_record(body, headers), JSON_ONLY)


@pytest.mark.parametrize("body", [b"[[1, 2], {\"a\"", b"\x00\x01\x02garbage", b""])
def test_message_undecodable_body(body: bytes) -> None:
    _, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(SerializationError, match="cannot decode"):
        TaskMessage.decode(as_record(body, headers), JSON_ONLY)


def test_message_none_value() -> None:
    _, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match="empty"):
        TaskMessage.decode(as_record(None, headers), JSON_ONLY)


def test_message_content_type_refused_unless_accepted() -> None:
    value, headers = TaskMessage("i", "t", [1], {}).encode(JSON_ONLY)
    headers = [(h, b"application/x-yaml" if h == "content-type" else v) for h, v in headers]
    with pytest.raises(SerializationError, match="not accepted"):
        TaskMessage.decode(as_record(value, headers), JSON_ONLY)


def test_pickle_refused_by_default_and_accepted_when_opted_in() -> None:
    both = Registry(("json", "pickle"))
    msg = TaskMessage("i", "t", [{1, 2}], {"when": (1, 2)}, b"k")
    record = encoded(msg, both, "pickle")
    assert record.header("content-type") == b"application/x-python-serialize"
    with pytest.raises(SerializationError, match="not accepted"):
        TaskMessage.decode(record, JSON_ONLY)
    assert TaskMessage.decode(record, both) == msg


def test_encode_unserializable_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot serialize with json"):
        TaskMessage("i", "t", [object()], {}).encode(JSON_ONLY)
    with pytest.raises(SerializationError, match="unknown serializer"):
        TaskMessage("i", "t").encode(JSON_ONLY, "yaml")


def test_retried_bumps_attempts_and_keeps_first_failure() -> None:
    msg = TaskMessage("i", "t", [1], {}, b"k")
    once = msg.retried(100.0, 105.0)
    assert (once.attempts, once.first_failure, once.eta) == (1, 100.0, 105.0)
    twice = once.retried(200.0, 210.0)
    assert (twice.attempts, twice.first_failure, twice.eta) == (2, 100.0, 210.0)
    assert msg.attempts == 0  # frozen: the original is untouched


# --------------------------------------------------------------------------- Settings


def test_settings_unknown_setting_names_it_with_hint() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build({"result_expire": 5}, environ={})
    assert "'result_expire'" in str(info.value)
    assert "did you mean 'result_expires'" in str(info.value)


def test_settings_unknown_setting_without_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'zzzzqqq'"):
        Settings.build({"zzzzqqq": 1}, environ={})


def test_settings_env_parsing() -> None:
    env = {
        "TASKQ_DEFAULT_PARTITIONS": "12",
        "TASKQ_CONNECT_TIMEOUT": "2.5",
        "TASKQ_RETRY_TIERS": "0.5, 5,30",
        "TASKQ_ACCEPT_CONTENT": "json,pickle",
        "TASKQ_SKIP_FINISHED": "no",
        "TASKQ_BROKER_URL": "kafka://h:1",
        "TASKQ_PRODUCER_OPTIONS": "linger.ms=5,acks=1",
        "TASKQ_NOT_A_SETTING": "ignored",
    }
    s = Settings.build({}, environ=env)
    assert s.default_partitions == 12 and isinstance(s.default_partitions, int)
    assert s.connect_timeout == 2.5
    assert s.retry_tiers == (0.5, 5.0, 30.0)
    assert s.accept_content == ("json", "pickle")
    assert s.skip_finished is False
    assert s.broker_url == "kafka://h:1"
    assert s.producer_options == {"linger.ms": "5", "acks": "1"}


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                          ("0", False), ("False", False), ("off", False)])
def test_settings_env_bool(raw: str, expected: bool) -> None:
    assert Settings.build({}, environ={"TASKQ_SKIP_FINISHED": raw}).skip_finished is expected


def test_settings_keyword_beats_env_and_none_means_unset() -> None:
    env = {"TASKQ_DEFAULT_PARTITIONS": "12", "TASKQ_BROKER_URL": "kafka://env:1"}
    s = Settings.build({"default_partitions": 3, "broker_url": None}, environ=env)
    assert s.default_partitions == 3
    assert s.broker_url == "kafka://env:1"


@pytest.mark.parametrize("name,raw", [("DEFAULT_PARTITIONS", "many"), ("DEFAULT_PARTITIONS", "1.5"),
                                      ("CONNECT_TIMEOUT", "soon"), ("RETRY_TIERS", "1,x"),
                                      ("SKIP_FINISHED", "maybe"), ("PRODUCER_OPTIONS", "novalue")])
def test_settings_env_bad_values(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.build({}, environ={f"TASKQ_{name}": raw})
    assert f"TASKQ_{name}" in str(info.value)


@pytest.mark.parametrize("override,fragment", [({"default_partitions": 0}, "default_partitions"),
                                               ({"replication_factor": 0}, "replication_factor"),
                                               ({"connect_timeout": 0}, "connect_timeout"),
                                               ({"send_timeout": -1.0}, "send_timeout"),
                                               ({"retry_tiers": (10.0, 1.0)}, "retry_tiers"),
                                               ({"retry_tiers": ()}, "retry_tiers")])
def test_settings_validation(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.build(override, environ={})


def test_settings_env_invalid_after_parse() -> None:
    with pytest.raises(ConfigError, match="retry_tiers"):
        Settings.build({}, environ={"TASKQ_RETRY_TIERS": "10,1"})


# --------------------------------------------------------------------------- RetryPolicy / tiers


def test_retry_delay_countdown_and_default() -> None:
    policy = RetryPolicy(default_retry_delay=7.0)
    assert policy.delay(0) == 7.0
    assert policy.delay(5) == 7.0
    assert policy.delay(3, countdown=2.5) == 2.5
    assert policy.delay(3, countdown=-4) == 0.0


def test_retry_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retry_backoff=True, retry_jitter=False, retry_backoff_max=20.0)
    assert [policy.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    factor3 = RetryPolicy(retry_backoff=3, retry_jitter=False)
    assert [factor3.delay(n) for n in range(3)] == [3.0, 6.0, 12.0]


def test_retry_backoff_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(retry_backoff=2, retry_jitter=True, retry_backoff_max=50.0)
    for attempts in range(8):
        upper = min(50.0, 2 * 2 ** attempts)
        samples = [policy.delay(attempts) for _ in range(200)]
        assert all(0.0 <= d <= upper for d in samples), (attempts, max(samples))
        assert len(set(samples)) > 1  # jitter actually varies
    assert max(policy.delay(30) for _ in range(200)) <= 50.0


def test_should_retry() -> None:
    policy = RetryPolicy(max_retries=2, autoretry_for=(ValueError, OSError), dont_autoretry_for=(UnicodeError,))
    assert policy.should_retry(ValueError("x"), 0)
    assert policy.should_retry(ConnectionError("x"), 1)  # subclass of OSError
    assert not policy.should_retry(ValueError("x"), 2)  # attempts exhausted
    assert not policy.should_retry(KeyError("x"), 0)  # not listed
    assert not policy.should_retry(UnicodeDecodeError("utf-8", b"", 0, 1, "r"), 0)  # excluded
    assert not RetryPolicy().should_retry(ValueError("x"), 0)  # nothing is autoretried by default


@pytest.mark.parametrize("delay,topic", [(0.0, "g.delay.1s"), (0.5, "g.delay.1s"), (1.0, "g.delay.1s"),
                                         (1.01, "g.delay.10s"), (10, "g.delay.10s"),
                                         (59, "g.delay.60s"), (600, "g.delay.600s"),
                                         (10_000, "g.delay.600s")])
def test_tier_topic(delay: float, topic: str) -> None:
    assert tier_topic("g", (1.0, 10.0, 60.0, 600.0), delay) == topic


def test_tier_topics_names() -> None:
    assert tier_topics("taskq.app", (0.5, 2.0)) == ["taskq.app.delay.0.5s", "taskq.app.delay.2s"]
    assert tier_topic("taskq.app", (0.5, 2.0), 0.25) == "taskq.app.delay.0.5s"


def test_app_delay_topics_belong_to_its_group(tmp_path: Path) -> None:
    app = Taskq("tiers", local_path=str(tmp_path / "q.db"), retry_tiers=(2.0, 20.0))
    assert app.delay_topics == ["taskq.tiers.delay.2s", "taskq.tiers.delay.20s"]
    assert app.delay_topic(3) == "taskq.tiers.delay.20s"
    other = Taskq("tiers", local_path=str(tmp_path / "q.db"), group="custom", retry_tiers=(2.0, 20.0))
    assert other.delay_topics[0] == "custom.delay.2s"


# --------------------------------------------------------------------------- OffsetTracker


def test_offset_tracker_commits_only_contiguous_finished() -> None:
    tp = ("topic", 0)
    other = ("topic", 1)
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.take(tp, offset)
    tracker.take(other, 0)
    assert tracker.to_commit() == {}
    tracker.finish(tp, 12)
    tracker.finish(tp, 11)
    assert tracker.to_commit() == {}  # 10 still running: nothing may be committed
    assert tracker.unfinished([tp]) == 2
    tracker.finish(tp, 10)
    assert tracker.to_commit() == {tp: 13}
    assert tracker.to_commit() == {}  # only points that moved
    tracker.finish(other, 0)
    assert tracker.to_commit([tp]) == {}
    assert tracker.to_commit([other]) == {other: 1}
    tracker.finish(tp, 13)
    assert tracker.unfinished([tp, other]) == 0
    assert tracker.to_commit() == {tp: 14}


def test_offset_tracker_forget_and_finish_after_revoke() -> None:
    tp = ("t", 0)
    tracker = OffsetTracker()
    tracker.take(tp, 0)
    tracker.take(tp, 1)
    tracker.forget([tp])
    tracker.finish(tp, 0)  # finished after the partition was revoked: ignored
    assert tracker.to_commit() == {}
    assert tracker.unfinished([tp]) == 0
    tracker.take(tp, 5)  # re-assigned later, starting elsewhere
    tracker.finish(tp, 5)
    assert tracker.to_commit() == {tp: 6}


def test_offset_tracker_abandoned_blocks_commit_but_is_not_waited_for() -> None:
    tp = ("t", 0)
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.take(tp, offset)
    tracker.finish(tp, 0)
    tracker.abandon(tp, 1)  # not run (stopping / revoked)
    tracker.finish(tp, 3)
    assert tracker.unfinished([tp]) == 1  # only offset 2 is still running
    tracker.finish(tp, 2)
    assert tracker.unfinished([tp]) == 0
    assert tracker.to_commit() == {tp: 1}  # never past the abandoned offset
    tracker.forget([tp])
    tracker.abandon(tp, 7)  # after a revoke: ignored
    tracker.take(tp, 1)
    assert tracker.unfinished([tp]) == 1


# --------------------------------------------------------------------------- KeyedDispatcher


def test_keyed_dispatcher_one_at_a_time_per_key_in_order() -> None:
    submitted: list[Record] = []
    dispatcher = KeyedDispatcher(submitted.append)
    a0, a1, a2 = (as_record(b"", [], offset=o, key=b"a") for o in (0, 1, 2))
    b3 = as_record(b"", [], offset=3, key=b"b")
    a_other_partition = as_record(b"", [], partition=1, offset=0, key=b"a")
    for r in (a0, a1, b3, a2, a_other_partition):
        dispatcher.dispatch(r)
    assert submitted == [a0, b3, a_other_partition]
    dispatcher.release(a0)
    assert submitted[-1] is a1 and len(submitted) == 4
    dispatcher.release(b3)
    assert len(submitted) == 4
    dispatcher.release(a1)
    assert submitted[-1] is a2
    dispatcher.release(a2)
    assert len(submitted) == 5
    a4 = as_record(b"", [], offset=4, key=b"a")
    dispatcher.dispatch(a4)  # key idle again: runs at once
    assert submitted[-1] is a4


def test_keyed_dispatcher_drop() -> None:
    submitted: list[Record] = []
    dispatcher = KeyedDispatcher(submitted.append)
    p0 = [as_record(b"", [], partition=0, offset=o, key=b"k") for o in range(3)]
    p1 = [as_record(b"", [], partition=1, offset=o, key=b"k") for o in range(2)]
    for r in p0 + p1:
        dispatcher.dispatch(r)
    assert submitted == [p0[0], p1[0]]
    assert dispatcher.drop({("t", 0)}) == p0[1:]
    dispatcher.release(p0[0])
    assert submitted == [p0[0], p1[0]]  # dropped records never start
    assert dispatcher.drop() == p1[1:]
    dispatcher.release(p1[0])
    assert submitted == [p0[0], p1[0]]


# --------------------------------------------------------------------------- execution.run


def test_run_success(app: Taskq) -> None:
    @app.task(name="u.add")
    def add(a: int, b: int) -> int:
        return a + b

    outcome = run(app, encoded(TaskMessage("id1", "u.add", [2, 3], {}, b"k")), "w1")
    assert outcome.kind is Kind.SUCCESS
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.result, outcome.result.attempts) == (SUCCESS, 5, 1)
    assert outcome.result.worker == "w1" and outcome.result.task == "u.add"


def test_run_bound_task_sees_request(app: Taskq) -> None:
    @app.task(name="u.me", bind=True)
    def me(self: object) -> dict[str, object]:
        req = self.request  # type: ignore[attr-defined]
        return {"id": req.id, "attempts": req.attempts, "offset": req.offset, "h": req.headers}

    msg = TaskMessage("id9", "u.me", [], {}, b"k", attempts=1, headers={"tenant": "x"})
    outcome = run(app, encoded(msg, offset=42), "w")
    assert outcome.result is not None
    assert outcome.result.result == {"id": "id9", "attempts": 1, "offset": 42, "h": {"tenant": "x"}}
    with pytest.raises(RuntimeError):
        me.request  # noqa: B018 - not running any more


def test_run_autoretry_gives_retry_with_attempts_bumped(app: Taskq) -> None:
    @app.task(name="u.flaky", autoretry_for=(ValueError,), max_retries=2, default_retry_delay=3.0)
    def flaky() -> None:
        raise ValueError("flaky")

    before = time.time()
    outcome = run(app, encoded(TaskMessage("id2", "u.flaky", [], {}, b"k", attempts=1)), "w")
    assert outcome.kind is Kind.RETRY
    assert outcome.message is not None and outcome.message.attempts == 2
    assert outcome.message.id == "id2" and outcome.message.key == b"k"
    assert outcome.message.first_failure is not None and outcome.message.first_failure >= before
    assert outcome.retry_delay == 3.0
    assert outcome.message.eta == pytest.approx(outcome.message.first_failure + 3.0, abs=0.5)
    assert outcome.result is not None and outcome.result.status == "RETRY"
    assert outcome.error_type == "ValueError" and "flaky" in outcome.error_message


def test_run_max_retries_exceeded_is_dead(app: Taskq) -> None:
    @app.task(name="u.flaky2", autoretry_for=(ValueError,), max_retries=2)
    def flaky() -> None:
        raise ValueError("still broken")

    outcome = run(app, encoded(TaskMessage("id3", "u.flaky2", [], {}, b"k", attempts=2)), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.message is None
    assert outcome.result is not None
    assert outcome.result.status == FAILURE and outcome.result.attempts == 3
    assert outcome.result.error == "ValueError: still broken"
    assert "raise ValueError" in (outcome.result.traceback or "")


def test_run_not_autoretried_exception_is_dead(app: Taskq) -> None:
    @app.task(name="u.boom", autoretry_for=(ValueError,))
    def boom() -> None:
        raise KeyError("nope")

    outcome = run(app, encoded(TaskMessage("id4", "u.boom", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD and outcome.error_type == "KeyError"


def test_run_explicit_retry(app: Taskq) -> None:
    @app.task(name="u.again", bind=True, max_retries=1)
    def again(self: object) -> None:
        raise self.retry(countdown=0.25)  # type: ignore[attr-defined]

    first = run(app, encoded(TaskMessage("id5", "u.again", [], {}, b"k")), "w")
    assert first.kind is Kind.RETRY and first.retry_delay == 0.25 and first.message is not None
    second = run(app, encoded(first.message), "w")
    assert second.kind is Kind.DEAD  # max_retries=1 used up


def test_run_reject_is_dead_without_retry(app: Taskq) -> None:
    @app.task(name="u.reject", autoretry_for=(Exception,), max_retries=5)
    def rejecting() -> None:
        raise Reject("poison")

    outcome = run(app, encoded(TaskMessage("id6", "u.reject", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.error_type == "taskq.errors.Reject"
    assert outcome.result is not None and outcome.result.status == FAILURE


def test_run_unknown_task_is_rejected(app: Taskq) -> None:
    outcome = run(app, encoded(TaskMessage("id7", "u.nosuch", [], {}, b"k")), "w")
    assert outcome.kind is Kind.REJECTED
    assert outcome.result is None
    assert outcome.error_type == "taskq.errors.NotRegistered"
    assert "u.nosuch" in outcome.error_message


def test_run_malformed_is_rejected(app: Taskq) -> None:
    outcome = run(app, as_record(b"\x00garbage", []), "w")
    assert outcome.kind is Kind.REJECTED and outcome.result is None
    assert outcome.error_type == "taskq.message.MalformedMessage"


def test_run_unserializable_return_value_fails(app: Taskq) -> None:
    @app.task(name="u.weird")
    def weird() -> object:
        return object()

    outcome = run(app, encoded(TaskMessage("id8", "u.weird", [], {}, b"k")), "w")
    assert outcome.kind is Kind.DEAD
    assert outcome.result is not None and outcome.result.status == FAILURE
    assert outcome.error_type == "taskq.errors.SerializationError"
    assert "u.weird" in outcome.error_message
    outcome.result.encode()  # the FAILURE record itself must be storable


# --------------------------------------------------------------------------- AsyncResult rebuild


def test_rebuild_builtin_exception_with_remote_traceback() -> None:
    rec = ResultRecord("tid", FAILURE, error="ValueError: bad value: really", traceback="Traceback...\nline 3")
    exc = rebuild_exception(rec)
    assert type(exc) is ValueError
    assert str(exc) == "bad value: really"
    assert any("Remote traceback (task tid)" in n and "line 3" in n for n in exc.__notes__)


def test_rebuild_imported_module_exception() -> None:
    exc = rebuild_exception(ResultRecord("t", FAILURE, error=f"{CustomError.__module__}.CustomError: custom"))
    assert type(exc) is CustomError and str(exc) == "custom"
    exc = rebuild_exception(ResultRecord("t", FAILURE, error="taskq.errors.SerializationError: nope"))
    assert type(exc) is SerializationError


@pytest.mark.parametrize("error", ["nosuchmodule_xyz.Boom: kaboom", "NoSuchBuiltinError: x",
                                   "KeyboardInterrupt: stop", "UnicodeDecodeError: needs five args"])
def test_rebuild_unknown_becomes_task_failed(error: str) -> None:
    exc = rebuild_exception(ResultRecord("t", FAILURE, error=error, traceback="remote tb"))
    assert type(exc) is TaskFailed
    assert str(exc) == error
    assert any("remote tb" in n for n in exc.__notes__)


def test_async_result_get_raises_rebuilt_exception(app: Taskq) -> None:
    app.backend.store_many([
        ResultRecord("ok", SUCCESS, {"v": [1, 2]}, attempts=1, date_done=time.time()),
        ResultRecord("bad", FAILURE, None, "ZeroDivisionError: division by zero", "Traceback: remote", attempts=1,
                     date_done=time.time()),
    ])
    assert app.AsyncResult("ok").get(timeout=1) == {"v": [1, 2]}
    result = AsyncResult("bad", app)
    with pytest.raises(ZeroDivisionError) as info:
        result.get(timeout=1)
    assert any("Traceback: remote" in n for n in info.value.__notes__)
    assert isinstance(result.get(timeout=1, propagate=False), ZeroDivisionError)
    assert result.failed() and result.ready() and not result.successful()
    assert result.traceback == "Traceback: remote"


# --------------------------------------------------------------------------- registration


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


# --------------------------------------------------------------------------- key selection


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
    app.flush()
    records = {r.header("id").decode(): r for r in read_records(app, keyed.topic, 8)}  # type: ignore[union-attr]
    assert len(records) == 8
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
