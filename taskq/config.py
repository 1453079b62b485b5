"""Typed settings built from keyword arguments and ``TASKQ_*`` environment variables.

Precedence: keyword argument, then environment, then default. An unknown setting is an error that
names it (and the closest known one), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from taskq.errors import ConfigError

BROKER_SCHEMES = ("kafka", "local")
BACKEND_SCHEMES = ("redis", "rediss", "unix", "local")


def _check_env_names(environ: Mapping[str, str], fields: Mapping[str, object]) -> None:
    """A ``TASKQ_`` variable one or two letters away from a setting's is a misspelt setting: an error. Other
    ``TASKQ_`` variables (``TASKQ_LLM_*``, ``TASKQ_MONITOR_TOKEN``, ...) belong to other parts of taskq."""
    for var in environ:
        name = var[6:].lower()
        if var.startswith("TASKQ_") and name not in fields:
            import difflib

            hint = difflib.get_close_matches(name, fields, n=1, cutoff=0.9)
            if hint:
                raise ConfigError(f"unknown setting {var} (did you mean TASKQ_{hint[0].upper()}?)")


@dataclass
class Settings:
    """Everything an app, its producer and its workers can be told."""

    broker_url: str = ""  # "" = the embedded local broker in ``local_path``
    result_backend: str = ""  # "" = the local broker's file, else required (redis://...)
    local_path: str = ""  # "" = ~/.taskq/<app name>.db
    default_partitions: int = 6
    replication_factor: int = 0  # 0 = the Kafka cluster's default.replication.factor
    topic_prefix: str = "taskq."
    group: str = ""  # "" = taskq.<app name>
    serializer: str = "json"
    accept_content: tuple[str, ...] = ("json",)
    result_expires: float = 86400.0
    connect_timeout: float = 10.0  # bound on reaching the broker or the backend
    send_timeout: float = 30.0  # a message not acknowledged by then fails (delivery error)
    outage_timeout: float = 300.0  # s: a broker or backend outage a worker waits out before it stops
    retry_tiers: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)
    default_max_retries: int = 3
    strict_order_max_hold: float = 30.0  # s: a strict_order task's retry due sooner waits in the worker
    skip_finished: bool = True  # skip a redelivered message whose result is already final
    events: bool = True  # workers publish task and worker events (taskq events / inspect)
    events_topic: str = ""  # "" = <topic_prefix>events
    events_include_args: bool = False  # put args, kwargs and result into task events
    events_coalesce: float = 1.0  # s: a task's state changes within this merge into its next event (0: none)
    track_started: bool = False  # also store STARTED in the result backend when a task starts
    producer_options: dict[str, Any] = field(default_factory=dict)  # extra librdkafka producer config
    consumer_options: dict[str, Any] = field(default_factory=dict)  # extra librdkafka consumer config

    @classmethod
    def build(cls, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from keyword overrides and ``TASKQ_<NAME>`` variables; unknown names raise."""
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in overrides:
            if name not in fields:
                import difflib

                hint = difflib.get_close_matches(name, fields, n=1)
                raise ConfigError(f"unknown setting {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        _check_env_names(environ, fields)
        values: dict[str, Any] = {}
        for name, f in fields.items():
            env = environ.get("TASKQ_" + name.upper())
            if name in overrides and overrides[name] is not None:
                values[name] = overrides[name]
            elif env is not None:
                values[name] = _parse(name, env, f.default if f.default is not dataclasses.MISSING else {})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        self._check_types()
        if self.default_partitions < 1:
            raise ConfigError(f"default_partitions must be at least 1, not {self.default_partitions}")
        if self.replication_factor < 0:
            raise ConfigError(f"replication_factor must be at least 1 (or 0: the cluster's default), "
                              f"not {self.replication_factor}")
        if self.default_max_retries < 0:
            raise ConfigError(f"default_max_retries must be 0 or more, not {self.default_max_retries}")
        for name in ("connect_timeout", "send_timeout", "outage_timeout"):
            if not 0 < getattr(self, name) < float("inf"):  # NaN too: a deadline of NaN is never reached
                raise ConfigError(f"{name} must be a positive number of seconds, not {getattr(self, name)}")
        if not 0 <= self.strict_order_max_hold < float("inf"):
            raise ConfigError(f"strict_order_max_hold must be 0 or more seconds, not {self.strict_order_max_hold}")
        if not MIN_EXPIRY <= self.result_expires <= MAX_EXPIRY:
            raise ConfigError(f"result_expires must be {MIN_EXPIRY:g} to {MAX_EXPIRY:g} s (results are kept in "
                              f"milliseconds), not {self.result_expires}")
        if any(not 0 < tier < float("inf") for tier in self.retry_tiers):
            raise ConfigError(f"retry_tiers must be positive delays in seconds, not {self.retry_tiers}")
        broker = _split(self.broker_url, "broker URL")
        if self.broker_url and (broker.scheme not in BROKER_SCHEMES or not (broker.netloc or broker.path)):
            raise ConfigError(f"bad broker URL {redact_url(self.broker_url)!r}: use kafka://host:port[,host:port] "
                              "or local:///path/to/file.db")
        backend = _split(self.result_backend, "result backend URL")
        if self.result_backend and (backend.scheme not in BACKEND_SCHEMES or not (backend.netloc or backend.path)):
            raise ConfigError(f"bad result backend URL {redact_url(self.result_backend)!r}: use redis://host:port/db "
                              "or local:///path/to/file.db")
        if not 0 <= self.events_coalesce < float("inf"):
            raise ConfigError(f"events_coalesce must be 0 or more seconds, not {self.events_coalesce}")
        if not self.retry_tiers or sorted(self.retry_tiers) != list(self.retry_tiers):
            raise ConfigError(f"retry_tiers must be increasing delays in seconds, not {self.retry_tiers}")

    def _check_types(self) -> None:
        """Each setting has its declared type (an int where a float is expected is converted)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:  # a setting without a default has no declared type to check against
                continue
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif isinstance(default, tuple) and isinstance(value, list):
                setattr(self, f.name, tuple(value))
            elif isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)):
                raise ConfigError(f"setting {f.name} must be of type {type(default).__name__}, not {value!r}")
            if isinstance(default, tuple) and default:
                item_type = type(default[0])
                items = tuple(float(x) if item_type is float and isinstance(x, int) and not isinstance(x, bool)
                              else x for x in getattr(self, f.name))
                if not all(isinstance(x, item_type) for x in items):
                    raise ConfigError(f"setting {f.name} must hold {item_type.__name__} values, not {value!r}")
                setattr(self, f.name, items)


MIN_EXPIRY = 0.001  # seconds: result expiry is written in milliseconds
MAX_EXPIRY = 1e12  # seconds (~31,700 years): Redis refuses an expiry past 2**63 ms from now
SECRET_WORDS = ("password", "secret", "token", "credential", "key")  # in option names, e.g. sasl.password


def redact_url(url: str) -> str:
    """``url`` fit for logs and pages: its password and the values of secret-looking options are ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL Python can split (a '[' in the password): keep only scheme and path
        scheme, _, rest = url.partition("://")
        path = rest.rpartition("@")[2].partition("/")[2].partition("?")[0]
        return f"{scheme}://***/{path}" if path else f"{scheme}://***"
    options = parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(word in name.lower() for word in SECRET_WORDS) for name, _ in options]
    if parts.password is None and not any(secret):
        return url
    netloc = parts.netloc if parts.password is None else parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urlencode([(name, "***" if hide else value) for (name, value), hide in zip(options, secret)], safe="*")
    return parts._replace(netloc=netloc, query=query).geturl()


def _split(url: str, what: str) -> SplitResult:
    """``urlsplit(url)``, or a ConfigError naming ``what`` for a URL Python cannot split."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"bad {what} {redact_url(url)!r}: {exc} (percent-encode a '[', ']' or '@' in a "
                          "password: %5B, %5D, %40)") from None


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = [x.strip() for x in raw.split(",") if x.strip()]
            return tuple(float(x) for x in items) if default and isinstance(default[0], float) else tuple(items)
        if isinstance(default, dict):
            return dict(item.split("=", 1) for item in raw.split(",") if item)
        return raw
    except ValueError:
        raise ConfigError(f"TASKQ_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
