"""Unit tests (no Kafka, no Redis): Settings: keyword arguments, TASKQ_* variables, validation."""

from __future__ import annotations

import re
import subprocess

import pytest

from taskq import ConfigError
from taskq.config import Settings, redact_url
from tests.support import ROOT


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


@pytest.mark.parametrize("name,raw", [("OUTAGE_TIMEOUT", "nan"), ("SEND_TIMEOUT", "inf"), ("CONNECT_TIMEOUT", "-nan"),
                                      ("STRICT_ORDER_MAX_HOLD", "-5"), ("RESULT_EXPIRES", "1e17")])
def test_settings_env_numbers_out_of_range_name_the_setting(name: str, raw: str) -> None:
    """A NaN timeout would make a deadline that is never reached: refused, in one line naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.build({}, environ={f"TASKQ_{name}": raw})
    assert name.lower() in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override,fragment", [({"default_partitions": 0}, "default_partitions"),
                                               ({"replication_factor": -1}, "replication_factor"),
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


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://app:hunter2@h:1/2", "redis://app:***@h:1/2"),
    ("kafka://h:9092?security.protocol=SASL_SSL&sasl.username=bob&sasl.password=hunter2",
     "kafka://h:9092?security.protocol=SASL_SSL&sasl.username=bob&sasl.password=***"),
    ("kafka://h:1?ssl.key.password=x%26y&sasl.oauthbearer.client.secret=s3",
     "kafka://h:1?ssl.key.password=***&sasl.oauthbearer.client.secret=***"),
    ("kafka://h:1,h:2?linger.ms=5", "kafka://h:1,h:2?linger.ms=5"),
    ("local:///tmp/q.db", "local:///tmp/q.db"),
    ("redis://u:p[w@h:1/0", "redis://***/0"),  # Python cannot split these: only scheme and path are shown
    ("redis://u:p[/w@h:1", "redis://***"),
])
def test_urls_are_shown_without_their_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_app_and_the_result_store_never_show_a_password() -> None:
    from taskq import Taskq
    from taskq.errors import BackendError
    from taskq.results.redis import RedisBackend

    app = Taskq("secrets", broker="kafka://127.0.0.1:1?sasl.password=hunter2")
    assert "hunter2" not in repr(app) and "sasl.password=***" in repr(app)
    backend = RedisBackend("redis://:hunter2@127.0.0.1:1/0", connect_timeout=0.5)  # nothing listens there
    with pytest.raises(BackendError) as info:
        backend.get_many(["x"])
    assert "hunter2" not in str(info.value) and ":***@127.0.0.1:1" in str(info.value)


def test_a_bad_url_is_named_without_its_password() -> None:
    from taskq import Taskq

    for broker, backend in (("nats://u:hunter2@h:1", None), ("kafka://127.0.0.1:1", "memcached://u:hunter2@h:1")):
        with pytest.raises(ConfigError) as info:
            Taskq("bad", broker=broker, backend=backend).backend  # noqa: B018
        assert "hunter2" not in str(info.value) and "u:***@h:1" in str(info.value)


def test_a_kafka_url_with_a_password_before_the_host_is_refused_without_showing_it() -> None:
    """``kafka://user:password@host`` names no SASL credentials: librdkafka took ``user:password@host`` for a
    host, printed it in every connection error, and so did ``cannot reach Kafka at ...`` (``taskq inspect``,
    ``taskq monitor``). The URL is refused at once, its password hidden."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = {**os.environ, "TASKQ_BROKER_URL": "kafka://alice:hunter2@127.0.0.1:1", "TASKQ_CONNECT_TIMEOUT": "2"}
    out = subprocess.run([sys.executable, "-m", "taskq.cli", "inspect", "workers"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "hunter2" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert "alice:***@127.0.0.1:1" in out.stderr and "sasl.password=" in out.stderr, out.stderr[-2000:]


def test_a_url_python_cannot_split_is_a_config_error_without_its_password() -> None:
    from taskq import Taskq

    with pytest.raises(ConfigError, match=r"bad result backend URL 'redis://\*\*\*/0'.*percent-encode") as caught:
        Taskq("x", broker="kafka://127.0.0.1:9092", backend="redis://u:p[w@h:1/0")
    assert "p[w" not in str(caught.value)


@pytest.mark.parametrize("name,hint", [("TASKQ_DEFAULT_PARTITONS", "TASKQ_DEFAULT_PARTITIONS"),
                                       ("TASKQ_BROKER_URI", "TASKQ_BROKER_URL"),
                                       ("TASKQ_RESULT_BACKED", "TASKQ_RESULT_BACKEND")])
def test_a_misspelt_setting_variable_is_an_error_that_names_the_setting(name: str, hint: str) -> None:
    """The README: "TASKQ_<NAME> environment variables (an unknown name is an error)". A misspelt one was
    ignored, so TASKQ_RESULT_BACKED=redis://... left a worker on the embedded store without a word."""
    with pytest.raises(ConfigError) as info:
        Settings.build({}, environ={name: "3"})
    assert name in str(info.value) and hint in str(info.value), str(info.value)


def test_taskqs_other_variables_are_not_taken_for_misspelt_settings() -> None:
    """Variables of taskq's other parts (LLM tasks, monitor, services, tests) share the prefix."""
    used = subprocess.run(["git", "grep", "-h", "TASKQ_", "--", ".", ":!tests/test_config.py"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"TASKQ_[A-Z0-9_]*[A-Z0-9]", used))
    assert "TASKQ_LLM_CONNECT_TIMEOUT" in names and "TASKQ_MONITOR_TOKEN" in names
    Settings.build({}, environ={n: "" for n in names if n[6:].lower() not in Settings.__dataclass_fields__})
