"""Unit tests (no Kafka, no Redis): TaskMessage and serializers: encoding, decoding, malformed input."""

from __future__ import annotations


import pytest

from taskq import SerializationError
from taskq.message import MalformedMessage, TaskMessage
from taskq.serialization import Registry
from tests.unit_support import JSON_ONLY, as_record, encoded


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


@pytest.mark.parametrize("name", ["id", "task", "attempts", "x-trace"])
def test_message_header_without_a_value_is_named(name: str) -> None:
    """A header sent without a value (kcat ``-H id``, a null header from a Java client)."""
    value, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match=f"bad header: no value in '{name}'"):
        TaskMessage.decode(as_record(value, [(h, v) for h, v in headers if h != name] + [(name, None)]), JSON_ONLY)


def test_message_empty_id_is_refused() -> None:
    """An empty id would store its result under no id: refused, as a missing one is."""
    value, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match="header 'id' is empty"):
        TaskMessage.decode(as_record(value, [(h, b"" if h == "id" else v) for h, v in headers]), JSON_ONLY)


def test_message_negative_attempts_is_refused() -> None:
    """An outside client's ``attempts: -5`` would grant the task five more retries than max_retries."""
    value, headers = TaskMessage("i", "t").encode(JSON_ONLY)
    with pytest.raises(MalformedMessage, match="'attempts' is negative: -5"):
        TaskMessage.decode(as_record(value, [*headers, ("attempts", b"-5")]), JSON_ONLY)


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


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"x": (None, -float("inf"))}]])
def test_non_finite_floats_are_refused_not_sent_as_null(value: object) -> None:
    """JSON has no NaN or Infinity; orjson writes them as null, which would reach the task as None."""
    with pytest.raises(SerializationError, match="NaN and infinite floats"):
        TaskMessage("i", "t", [value], {}).encode(JSON_ONLY)
    value_, _ = TaskMessage("i", "t", [None, 1.5, [None]], {"k": None}).encode(JSON_ONLY)
    assert value_ == b'[[null,1.5,[null]],{"k":null}]'


def test_retried_bumps_attempts_and_keeps_first_failure() -> None:
    msg = TaskMessage("i", "t", [1], {}, b"k")
    once = msg.retried(100.0, 105.0)
    assert (once.attempts, once.first_failure, once.eta) == (1, 100.0, 105.0)
    twice = once.retried(200.0, 210.0)
    assert (twice.attempts, twice.first_failure, twice.eta) == (2, 100.0, 210.0)
    assert msg.attempts == 0  # frozen: the original is untouched
