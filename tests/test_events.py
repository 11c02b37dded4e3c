"""From a NOTIFY payload to an SSE event: the rules of ``events.event_from_notification``.

Every mapped event is also read back by httpx-sse (see ``test_sse.parse``), so these
tests check the bytes a browser gets, not only the ``Event`` fields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sserelay.relay import Relay
from sserelay.testing import SseClient, notify
from sserelay.wire.envelope import ENVELOPE_KEYS, Event, event_from_notification
from test_sse import any_text, expected_data, field_text, parse

Fields = tuple[str, str | None, str | None, int | None]  # data, event, id, retry


def fields(event: Event) -> Fields:
    return event.data, event.event, event.id, event.retry


def wire(event: Event) -> Fields:
    """The event as httpx-sse reads it from ``event.frame``; exactly one event is required."""
    (got,) = parse(event.frame)
    return got.data, None if got.event == "message" else got.event, got.id or None, got.retry


def verbatim(payload: str) -> Fields:
    return payload, None, None, None


# -- the rules, one by one ---------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "Hello, world!",
        "",
        " {not json",
        "{not json",
        "{",
        "[1, 2]",
        '"a JSON string"',
        "42",
        "null",
        "true",
        '{"text": "hi"}',  # other keys
        '{"data": "x", "extra": 1}',  # one other key is enough
        '{"Data": "x"}',  # keys are case-sensitive
        "{}",  # an empty object is not an envelope
        ' {"data": "x"}',  # an envelope starts with "{" (leading whitespace: text)
    ],
)
def test_not_an_envelope_is_verbatim(payload: str) -> None:
    event = event_from_notification("lobby", payload)
    assert event.channel == "lobby"
    assert fields(event) == verbatim(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"data": "x"}', ("x", None, None, None)),
        ('{"data": "x"} ', ("x", None, None, None)),
        ('{"event": "message_created", "data": {"text": "hi"}, "id": 5}', None),
        ('{"data": "line 1\\nline 2"}', ("line 1\nline 2", None, None, None)),
        ('{"event_id": 7, "data": "x"}', ("x", None, "7", None)),
        ('{"id": "a", "event_id": "b", "data": "x"}', ("x", None, "a", None)),
        ('{"retry": 5000, "data": "x"}', ("x", None, None, 5000)),
        ('{"retry": 0, "data": "x"}', ("x", None, None, 0)),
        ('{"event": "only a name"}', ("", "only a name", None, None)),
        ('{"event": 12, "data": "x"}', ("x", "12", None, None)),
        ('{"event": null, "id": null, "retry": null, "data": "x"}', ("x", None, None, None)),
        ('{"id": "", "data": "x"}', ("x", None, "", None)),
        ('{"id": "", "event_id": "7", "data": "x"}', ("x", None, "", None)),
        ('{"id": 5, "event_id": ["ignored"], "data": "x"}', ("x", None, "5", None)),
        ('{"data": "x", "data": "y"}', ("y", None, None, None)),  # JSON: the last one wins
        ('{"event": "e\\u0000", "data": "x"}', ("x", "e\x00", None, None)),
    ],
)
def test_envelope(payload: str, expected: Fields | None) -> None:
    if expected is None:
        expected = ('{"text":"hi"}', "message_created", "5", None)
    event = event_from_notification("lobby", payload)
    assert fields(event) == expected
    assert wire(event) == (expected[0], expected[1], expected[2] or None, expected[3])


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"text": "hi", "n": [1, 2.5, None, True]}, '{"text":"hi","n":[1,2.5,null,true]}'),
        ({"é": "😀"}, '{"é":"😀"}'),  # not \\u-escaped
        ([1, 2], "[1,2]"),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        ("", ""),
    ],
)
def test_non_string_data_is_compact_json(data: Any, text: str) -> None:
    event = event_from_notification("c", json.dumps({"data": data}))
    assert fields(event) == (text, None, None, None)


@pytest.mark.parametrize(
    "envelope",
    [
        {"data": "x", "event": "a\nb"},  # line break in event
        {"data": "x", "event": "a\rb"},
        {"data": "x", "id": "a\r\nb"},  # line break in id
        {"data": "x", "id": "a\x00b"},  # NUL in id
        {"data": "x", "event_id": "a\nb"},
        {"data": "x", "retry": -1},
        {"data": "x", "retry": 1.5},
        {"data": "x", "retry": 1.0},
        {"data": "x", "retry": "100"},
        {"data": "x", "retry": True},
        {"data": "x", "event": True},
        {"data": "x", "event": 1.5},
        {"data": "x", "event": ["a"]},
        {"data": "x", "event": {"a": 1}},
        {"data": "x", "id": False},
        {"data": "x", "id": 1.5},
        {"data": "x", "id": ["a"]},
        {"data": "x", "event_id": ["a"]},
    ],
)
def test_envelope_with_a_bad_field_is_verbatim(envelope: dict[str, Any]) -> None:
    payload = json.dumps(envelope)
    event = event_from_notification("c", payload)
    assert fields(event) == verbatim(payload)
    assert wire(event) == verbatim(payload)


@pytest.mark.parametrize(
    "payload",
    [
        '{"data": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"data":' + '{"a":' * 1200 + "1" + "}" * 1200 + "}",
        '{"other": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"data": ' + "[" * 3990,  # unterminated
    ],
    ids=["deep-list", "deep-object", "deep-other-key", "deep-unterminated"],
)
def test_deeply_nested_json_is_verbatim(payload: str) -> None:
    # Under NOTIFY's 8000-byte limit, and deep enough to exhaust Python's recursion limit
    # in the json module: the payload is delivered as text, not an exception.
    assert len(payload.encode()) < 8000
    assert fields(event_from_notification("c", payload)) == verbatim(payload)


def test_huge_numbers() -> None:
    # Python refuses to parse integers of more than 4300 digits: that is not an envelope.
    payload = '{"retry": ' + "9" * 5000 + ', "data": "x"}'
    assert fields(event_from_notification("c", payload)) == verbatim(payload)
    payload = '{"retry": ' + "9" * 4000 + ', "data": "x"}'
    assert fields(event_from_notification("c", payload)) == ("x", None, None, int("9" * 4000))


def test_verbatim_text_cannot_inject() -> None:
    payload = "x\n\nevent: evil\nid: 666\ndata: injected\r\n\r\nretry: 1"
    event = event_from_notification("c", payload)
    assert wire(event) == (expected_data(payload), None, None, None)


# -- fuzzing -----------------------------------------------------------------------


class _Verbatim(Exception):
    pass


def model(payload: str) -> Fields:
    """The module docstring's rules, written out independently of the implementation."""
    if not payload.startswith("{"):
        return verbatim(payload)
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return verbatim(payload)
    if not isinstance(obj, dict) or not obj or not set(obj) <= ENVELOPE_KEYS:
        return verbatim(payload)

    def text(key: str, *, line: bool = False, nul: bool = False) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if type(value) is int:
            return str(value)
        if type(value) is not str:
            raise _Verbatim
        if "\r" in value or "\n" in value or (nul and "\x00" in value):
            raise _Verbatim
        return value

    try:
        event = text("event")
        id_ = text("id", nul=True)
        if id_ is None:  # event_id is only an alias for a missing id
            id_ = text("event_id", nul=True)
        retry = obj.get("retry")
        if retry is not None and (type(retry) is not int or retry < 0):
            raise _Verbatim
    except _Verbatim:
        return verbatim(payload)
    data = obj.get("data", "")
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return data, event, id_, retry


def _on_the_wire(expected: Fields) -> Fields:
    data, event, id_, retry = expected
    swap = str.maketrans({chr(c): "?" for c in range(0xD800, 0xE000)})
    return (
        expected_data(data),
        event.translate(swap) if event else None,
        id_.translate(swap) if id_ else None,
        retry,
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner)
)
field_values = (
    st.none()
    | field_text
    | any_text
    | st.integers()
    | st.integers(min_value=0, max_value=10**9)
    | st.booleans()
    | st.floats()
    | st.lists(st.integers(), max_size=2)
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "data": json_values,
        "event": field_values,
        "id": field_values,
        "event_id": field_values,
        "retry": field_values,
        "other": json_values,
    },
)


@settings(deadline=None)
@given(payload=any_text)
def test_any_payload(payload: str) -> None:
    event = event_from_notification("c", payload)
    assert fields(event) == model(payload)
    assert wire(event) == _on_the_wire(model(payload))


@settings(deadline=None, max_examples=300)
@given(envelope=envelopes, ascii=st.booleans())
def test_any_envelope(envelope: dict[str, Any], ascii: bool) -> None:
    payload = json.dumps(envelope, ensure_ascii=ascii)
    event = event_from_notification("c", payload)
    assert fields(event) == model(payload)
    assert wire(event) == _on_the_wire(model(payload))


@settings(deadline=None)
@given(data=any_text, event=st.none() | field_text, id=st.none() | field_text)
def test_valid_envelope_round_trips(data: str, event: str | None, id: str | None) -> None:
    envelope = {"data": data, "event": event, "id": id}
    payload = json.dumps(envelope)
    if id is not None and "\x00" in id:
        assert fields(event_from_notification("c", payload)) == verbatim(payload)
    else:
        # What JSON carries: an escaped surrogate pair in the text decodes to one character.
        sent = json.loads(payload)
        expected = (sent["data"], sent["event"], sent["id"], None)
        assert fields(event_from_notification("c", payload)) == expected


# -- through a real relay ----------------------------------------------------------


@pytest.mark.e2e
async def test_relay_survives_a_pathological_payload(relay: Relay, dsn: str) -> None:
    """A payload that used to crash the mapping must reach the stream, and so must the next."""
    deep = '{"data": ' + "[" * 3000 + "]" * 3000 + "}"
    client = await SseClient.open("127.0.0.1", relay.port, "/events/pathological")
    try:
        await client.wait_ready()
        await notify(dsn, "pathological", deep)
        await notify(dsn, "pathological", "after")
        first = await client.next_event()
        second = await client.next_event()
        assert (first.data, second.data) == (deep, "after"), client.seen
    finally:
        await client.close()
