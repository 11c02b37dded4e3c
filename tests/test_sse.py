"""The SSE encoder, checked against an independent parser (httpx-sse).

Frames are read back through httpx-sse's public API: an ``EventSource`` over an
in-memory ``httpx.Response``. That is the path a real client takes (httpx's
charset decoding, then httpx-sse's WHATWG line splitting on CR, LF and CRLF only,
then its field parser), without reaching into httpx-sse's private ``_decoders``
module, whose names may change between releases.

The round trip, per the WHATWG "event stream interpretation" rules:

- every line end in ``data`` (CRLF, CR or LF) comes back as one LF: the encoder
  writes one ``data:`` line per line and the parser joins them with LF;
- so a trailing line end comes back as a trailing LF (the encoder's last
  ``data:`` line is empty), and empty data comes back as empty data;
- leading spaces survive: the parser strips exactly one space after the colon,
  and that is the one the encoder puts there;
- anything else (NUL, U+2028, U+0085, a BOM, other control characters) is not a
  line end and comes back as it was; lone surrogates, which UTF-8 cannot carry,
  come back as ``?``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from sserelay.errors import InvalidEvent
from sserelay.wire import sse
from sserelay.wire.envelope import Event

_LINE_END = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def parse(body: bytes | Iterable[bytes]) -> list[ServerSentEvent]:
    """Every event httpx-sse reads from ``body`` (bytes, or an iterable of chunks)."""
    content = body if isinstance(body, bytes) else iter(list(body))
    response = httpx.Response(
        200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, content=content
    )
    return list(EventSource(response).iter_sse())


def expected_data(data: str) -> str:
    """What a WHATWG parser gives back for ``data`` sent through the encoder."""
    return _LINE_END.sub("\n", _SURROGATE.sub("?", data))


# Text that is likely to break a naive encoder: line ends of every kind, field
# names, blank lines, characters other parsers (str.splitlines) treat as line
# ends, NUL and other control characters, the BOM, astral characters, lone
# surrogates, plus anything else Hypothesis likes.
_TRICKY = st.sampled_from(
    [
        "\r",
        "\n",
        "\r\n",
        "\n\n",
        "\r\r",
        "\n\r",
        " ",
        ":",
        "data:",
        "data: x",
        "event: injected",
        "id: 666",
        "retry: 1",
        "\x00",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1d",
        "\x1e",
        "\x85",
        "\u2028",
        "\u2029",
        "\ufeff",
        "é",
        "😀",
        "\ud800",
        "\udfff",
    ]
)
any_text = st.lists(
    st.one_of(_TRICKY, st.characters(exclude_categories=()), st.text()), max_size=30
).map("".join)
field_text = any_text.map(lambda s: _LINE_END.sub("", s))
id_text = field_text.map(lambda s: s.replace("\x00", ""))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("hello", "hello"),
        ("", ""),
        ("a\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\nb", "a\nb"),
        ("a\n\rb", "a\n\nb"),  # LF then CR: two line ends, not one CRLF
        ("a\n", "a\n"),
        ("\n", "\n"),
        ("\r\n", "\n"),
        ("\n\n", "\n\n"),
        (" leading space", " leading space"),
        ("  two", "  two"),
        ("trailing space ", "trailing space "),
        ("data: not a field", "data: not a field"),
        (":not a comment", ":not a comment"),
        ("\n: nor this", "\n: nor this"),
        ("\nevent: nor this", "\nevent: nor this"),
        ("\x00nul", "\x00nul"),
        ("\u2028\u2029\x85\x0b\x0c", "\u2028\u2029\x85\x0b\x0c"),
        ("\ufeffbom", "\ufeffbom"),
        ("héllo wörld 😀 日本", "héllo wörld 😀 日本"),
        ("lone \ud800 surrogate", "lone ? surrogate"),
    ],
)
def test_data_round_trip(data: str, expected: str) -> None:
    events = parse(sse.encode_event(data))
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [("message", expected, "", None)]


def test_frame_layout() -> None:
    frame = sse.encode_event("a\r\nb", event="update", id="7", retry=1500)
    assert frame == b"event: update\nid: 7\nretry: 1500\ndata: a\ndata: b\n\n"


def test_fields_round_trip() -> None:
    frame = sse.encode_event("x", event=" spaced name", id=" 42", retry=0)
    (event,) = parse(frame)
    assert (event.event, event.data, event.id, event.retry) == (" spaced name", "x", " 42", 0)


def test_empty_event_name_and_id() -> None:
    # An empty event type dispatches as "message"; an empty id resets the last event id.
    (event,) = parse(sse.encode_event("x", event="", id=""))
    assert (event.event, event.id) == ("message", "")


def test_unicode_fields() -> None:
    (event,) = parse(sse.encode_event("données", event="mise à jour 😀", id="clé-1"))
    assert (event.event, event.data, event.id) == ("mise à jour 😀", "données", "clé-1")


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nb", "\n", "end\r"])
def test_line_breaks_in_fields_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidEvent, match=f"SSE {field} may not contain a line break"):
        sse.encode_event("x", **{field: value})  # type: ignore[arg-type]  # kwargs by name


def test_nul_in_id_is_refused_but_not_in_event() -> None:
    with pytest.raises(InvalidEvent, match="NUL"):
        sse.encode_event("x", id="a\x00b")
    (event,) = parse(sse.encode_event("x", event="a\x00b"))
    assert event.event == "a\x00b"


@pytest.mark.parametrize("retry", [-1, True, False, 1.5, 2.0, "100"])
def test_bad_retry_is_refused(retry: object) -> None:
    with pytest.raises(InvalidEvent, match="retry must be a non-negative integer"):
        sse.encode_event("x", retry=retry)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(InvalidEvent):
        sse.encode_retry(retry)  # type: ignore[arg-type]  # the point of the test


def test_encode_retry() -> None:
    assert sse.encode_retry(2000) == b"retry: 2000\n\n"
    # WHATWG dispatches nothing for a block without data; httpx-sse (0.4) does dispatch an
    # empty event carrying the retry, so check the field rather than the event count.
    assert [e.retry for e in parse(sse.encode_retry(2000))] == [2000]


@pytest.mark.parametrize(
    ("text", "frame"),
    [
        ("", b":\n\n"),
        ("ping", b": ping\n\n"),
        ("a\nb", b": a\n: b\n\n"),
        ("a\r\n\rb", b": a\n:\n: b\n\n"),
    ],
)
def test_encode_comment(text: str, frame: bytes) -> None:
    assert sse.encode_comment(text) == frame
    assert parse(frame) == []


def test_chunk() -> None:
    assert sse.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert sse.chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert sse.LAST_CHUNK == b"0\r\n\r\n"


def test_event_encodes_once() -> None:
    event = Event("lobby", "a\nb", event="e", id="1", retry=5)
    assert event.frame == sse.encode_event("a\nb", event="e", id="1", retry=5)
    assert event.chunked == sse.chunk(event.frame)
    # The frame is derived, so it takes no part in equality.
    assert event == Event("lobby", "a\nb", event="e", id="1", retry=5)
    with pytest.raises(AttributeError):
        event.data = "changed"  # type: ignore[misc]  # frozen: that is what is tested


def test_event_refuses_what_the_encoder_refuses() -> None:
    with pytest.raises(InvalidEvent):
        Event("lobby", "x", event="a\nb")


# -- fuzzing -----------------------------------------------------------------------


@settings(deadline=None)
@given(data=any_text)
def test_any_data_round_trips(data: str) -> None:
    frame = sse.encode_event(data)
    events = parse(frame)
    assert len(events) == 1, (frame, events)
    assert events[0].data == expected_data(data)


@settings(deadline=None)
@given(data=any_text)
def test_data_cannot_inject_fields_or_events(data: str) -> None:
    frame = sse.encode_event(data)
    # Structurally: LF-terminated "data: " lines, then one blank line, and no CR at all.
    assert b"\r" not in frame
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].split(b"\n")
    assert all(line.startswith(b"data: ") for line in lines), frame
    # And as a parser sees it: one event, no name, no id, no retry.
    events = parse(frame)
    assert [(e.event, e.id, e.retry) for e in events] == [("message", "", None)], frame


@settings(deadline=None)
@given(
    data=any_text,
    event=st.none() | field_text,
    id=st.none() | id_text,
    retry=st.none() | st.integers(min_value=0, max_value=2**63),
)
def test_all_fields_round_trip(
    data: str, event: str | None, id: str | None, retry: int | None
) -> None:
    frame = Event("c", data, event=event, id=id, retry=retry).frame
    events = parse(frame)
    assert len(events) == 1, (frame, events)
    got = events[0]
    assert got.data == expected_data(data)
    assert got.event == (_SURROGATE.sub("?", event) if event else "message")
    assert got.id == ("" if id is None else _SURROGATE.sub("?", id))
    assert got.retry == retry


@settings(deadline=None)
@given(
    datas=st.lists(any_text, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_stream_split_anywhere(datas: list[str], cuts: list[int]) -> None:
    """Events on one stream, delivered in arbitrary byte chunks (even mid-character)."""
    body = b"".join(
        [sse.encode_retry(2000), sse.encode_comment("ready")]
        + [
            sse.encode_event(d, event=f"e{i}") + sse.encode_comment("ping")
            for i, d in enumerate(datas)
        ]
    )
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    # httpx-sse (0.4) dispatches the bare ``retry:`` block as an empty event (WHATWG
    # dispatches nothing without data): leave it out.
    events = [e for e in parse(chunks) if e.retry is None]
    assert [(e.event, e.data) for e in events] == [
        (f"e{i}", expected_data(d)) for i, d in enumerate(datas)
    ], chunks


@settings(deadline=None)
@given(text=any_text)
def test_comments_never_dispatch(text: str) -> None:
    frame = sse.encode_comment(text)
    assert frame.endswith(b"\n\n")
    assert all(line.startswith(b":") for line in frame[:-2].split(b"\n")), frame
    assert b"\r" not in frame
    assert parse(frame) == []
