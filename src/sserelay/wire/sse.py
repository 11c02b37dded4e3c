"""The Server-Sent Events wire format (WHATWG HTML, "server-sent events").

Everything here produces ``bytes`` ready for the socket. Data is split on every
line end the spec knows (CRLF, CR, LF), one ``data:`` line each, so a payload
can never inject a field or a second event. ``event`` and ``id`` may not contain
line ends, and browsers ignore an ``id`` containing NUL: both are refused.
"""

from __future__ import annotations

import re

from ..errors import InvalidEvent

_LINE_END = re.compile(r"\r\n|\r|\n")


def _check_field(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidEvent(f"SSE {name} may not contain a line break")
    if "\x00" in value and name == "id":
        raise InvalidEvent("SSE id may not contain NUL (browsers ignore such ids)")


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event. Empty ``data`` still dispatches an event (one empty ``data:`` line)."""
    parts: list[str] = []
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_field("id", id)
        parts.append(f"id: {id}\n")
    if retry is not None:
        parts.append(f"retry: {check_retry(retry)}\n")
    parts.extend(f"data: {line}\n" for line in _LINE_END.split(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8", "replace")


def encode_comment(text: str = "") -> bytes:
    """A comment line (``: text``); browsers ignore it, proxies see traffic."""
    lines = _LINE_END.split(text)
    comment = "".join(f": {line}\n" if line else ":\n" for line in lines) + "\n"
    return comment.encode("utf-8", "replace")  # as encode_event: never raise on a lone surrogate


def encode_retry(milliseconds: int) -> bytes:
    """A ``retry:`` field on its own: sets the client's reconnection delay."""
    return f"retry: {check_retry(milliseconds)}\n\n".encode()


def check_retry(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"SSE retry must be a non-negative integer, not {value!r}")
    return value


def chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"
