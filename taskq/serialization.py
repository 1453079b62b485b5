"""Serializer registry after kombu's: a name maps to (content type, dumps, loads).

JSON is the default and the only accepted type unless the app opts in to more (``accept_content``);
pickle is registered but refused by workers until accepted, since it runs code on load.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from taskq.errors import ConfigError, SerializationError

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; plain json keeps working without it
    orjson = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Serializer:
    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


NON_FINITE = "NaN and infinite floats have no JSON form (they would arrive as None)"


def json_dumps(obj: Any, within: tuple[Any, ...] | None = None) -> bytes:
    """Compact JSON; ValueError for NaN and infinite floats, which orjson would write as null. They are
    looked for in ``within`` (the parts of ``obj`` that can hold them: a result record's result and meta,
    not its own fields), by default in all of ``obj``."""
    if orjson is None:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    data = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    # only a null can hide one (find: half the cost of 'in' on a short body)
    if data.find(b"null") != -1 and any(value and _has_non_finite(value) for value in within or (obj,)):
        raise ValueError(NON_FINITE)
    return data


def _has_non_finite(obj: Any) -> bool:
    """Whether ``obj`` holds a NaN or infinite float (loops, not generators: results pass here)."""
    kind = type(obj)
    if kind is dict:
        obj = obj.values()
    elif kind is not list and kind is not tuple:
        return isinstance(obj, float) and not math.isfinite(obj)
    for value in obj:
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return True
        elif kind is not str and kind is not int and value is not None and _has_non_finite(value):
            return True
    return False


def json_dumps_str_keys(obj: Any) -> bytes:
    """Compact JSON of values whose dict keys are all strings (events): 40 % faster than ``JSON.dumps``,
    which also takes other keys."""
    return orjson.dumps(obj) if orjson is not None else json_dumps(obj)


def _json_loads(data: bytes) -> Any:
    return orjson.loads(data) if orjson is not None else json.loads(data)


JSON = Serializer("json", "application/json", json_dumps, _json_loads)
PICKLE = Serializer("pickle", "application/x-python-serialize", pickle.dumps, pickle.loads)


class Registry:
    """Serializers by name and by content type; ``accept`` limits what may be decoded."""

    def __init__(self, accept: Iterable[str] = ("json",)) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[str, Serializer] = {}
        for serializer in (JSON, PICKLE):
            self.register(serializer)
        self.accept = frozenset(self.get(name).content_type for name in accept)

    def register(self, serializer: Serializer) -> None:
        self._by_name[serializer.name] = serializer
        self._by_type[serializer.content_type] = serializer

    def get(self, name: str) -> Serializer:
        try:
            return self._by_name[name]
        except KeyError:
            raise SerializationError(f"unknown serializer {name!r}; registered: {sorted(self._by_name)}") from None

    def check_accepted(self, name: str, what: str) -> None:
        """ConfigError unless ``name`` is a registered serializer this app's workers accept: ``what``
        (a task, the app) would send messages that its own workers dead-letter."""
        if self.get(name).content_type not in self.accept:
            raise ConfigError(f"{what} sends with serializer {name!r}, which accept_content does not list, so "
                              f"workers would refuse its messages: add {name!r} to accept_content")

    def dumps(self, obj: Any, name: str = "json") -> tuple[str, bytes]:
        """(content type, payload); a clear error names what could not be encoded."""
        serializer = self.get(name)
        try:
            return serializer.content_type, serializer.dumps(obj)
        except (TypeError, ValueError, pickle.PicklingError) as exc:
            raise SerializationError(f"cannot serialize with {name}: {exc}") from exc

    def by_content_type(self, content_type: str) -> Serializer | None:
        """The serializer for a content type as HTTP reads it (``Application/JSON; charset=utf-8``)."""
        media, params = parse_content_type(content_type)
        serializer = self._by_type.get(media)
        if serializer is None:
            return None
        charset = params.get("charset")
        if charset is not None and serializer is JSON and charset not in JSON_CHARSETS:
            raise SerializationError(f"content type {content_type!r}: JSON must be UTF-8, not {charset!r}")
        return serializer

    def loads(self, payload: bytes, content_type: str) -> Any:
        """Decode ``payload``; refuses content types not accepted."""
        serializer = self.by_content_type(content_type)
        if serializer is None or serializer.content_type not in self.accept:
            raise SerializationError(f"content type {content_type!r} is not accepted (accept_content)")
        try:
            return serializer.loads(payload)
        except Exception as exc:
            raise SerializationError(f"cannot decode {content_type} payload: {exc}") from exc


JSON_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``"Application/JSON; charset=UTF-8"`` -> ``("application/json", {"charset": "utf-8"})``.

    Media type and parameter names are case-insensitive (RFC 9110); values may be quoted. The
    charset value is lower-cased too, since charset names are case-insensitive.
    """
    media, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        name, sep, raw = item.partition("=")
        if sep:
            name = name.strip().lower()
            raw = raw.strip().strip('"')
            params[name] = raw.lower() if name == "charset" else raw
    return media.strip().lower(), params
