"""From a notification payload to the bytes every subscriber gets.

A payload that is a JSON object using only the keys ``event``, ``data``, ``id``,
``retry`` (and ``event_id``, the name seed 000 used for ``id``, read when there
is no ``id``) becomes that SSE event; a non-string ``data`` is sent as compact
JSON text. Anything else (plain
text, other JSON, an object with other keys, fields of the wrong type) is sent
verbatim as ``data``. So a payload is never rejected: at worst it arrives as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidEvent
from . import sse

ENVELOPE_KEYS = frozenset({"event", "data", "id", "event_id", "retry"})


@dataclass(frozen=True, slots=True)
class Event:
    """One event as it goes on the wire."""

    channel: str
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    #: Position in a durable channel's log (its ``id`` unless a composite one is set).
    seq: int | None = None
    frame: bytes = field(init=False, repr=False, compare=False)
    chunked: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.seq is not None and self.id is None:
            object.__setattr__(self, "id", str(self.seq))
        # Encoded once, here; every subscriber gets these very bytes.
        frame = sse.encode_event(self.data, event=self.event, id=self.id, retry=self.retry)
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "chunked", sse.chunk(frame))

    @classmethod
    def joined(cls, events: Sequence[Event]) -> Event:
        """Consecutive plain events of one channel as one event-shaped value, whose frame
        and chunk are theirs joined (written to a stream at once). It has no position."""
        joined = cls.__new__(cls)
        object.__setattr__(joined, "channel", events[0].channel)
        object.__setattr__(joined, "data", "")
        for name in ("event", "id", "retry", "seq"):
            object.__setattr__(joined, name, None)
        object.__setattr__(joined, "frame", b"".join(e.frame for e in events))
        object.__setattr__(joined, "chunked", b"".join(e.chunked for e in events))
        return joined

    def with_id(self, id: str) -> Event:
        """The same event under another ``id`` (a multi-channel stream's composite id)."""
        return Event(
            self.channel, self.data, event=self.event, id=id, retry=self.retry, seq=self.seq
        )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _envelope(payload: str) -> dict[str, Any] | None:
    """The payload as an envelope dict, or None if it is not one."""
    if not payload.startswith("{"):
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # deep nesting fits in 8000 bytes: not an envelope
        return None
    if not isinstance(obj, dict) or not obj or not obj.keys() <= ENVELOPE_KEYS:
        return None
    return obj


def _optional_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"{key} must be a string or an integer")
    return str(value)


def event_from_notification(channel: str, payload: str) -> Event:
    """Map a NOTIFY payload to an :class:`Event` (see the module docstring for the rules)."""
    obj = _envelope(payload)
    if obj is not None:
        try:
            retry = obj.get("retry")
            id_ = _optional_text(obj, "id")  # an empty id is an id (it resets Last-Event-ID)
            return Event(
                channel,
                _as_text(obj.get("data", "")),
                event=_optional_text(obj, "event"),
                id=_optional_text(obj, "event_id") if id_ is None else id_,
                retry=None if retry is None else sse.check_retry(retry),
            )
        except (InvalidEvent, RecursionError):
            pass  # a field that cannot go on the wire: deliver the payload as text instead
    return Event(channel, payload)
