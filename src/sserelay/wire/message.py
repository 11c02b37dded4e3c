"""An event on its way out: checked once, encoded once, whatever the bus.

:meth:`Message.build` validates a publish's arguments (channel, event name, id,
``retry``, data) and :class:`Message` then gives each bus what it needs, computed at
most once: :attr:`~Message.text` (the data as stored in a durable log: a ``str`` as is,
anything else as compact JSON) and :meth:`~Message.envelope` (the JSON payload of a
plain notification, ``{"data": ..., "event": ..., "id": ..., "retry": ...}``, decoded
by :mod:`sserelay.wire.envelope` on every relay).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import InvalidEvent, PayloadTooLarge
from .channels import validate_channel
from .sse import check_retry, encode_event


def _compact_json(value: Any) -> str:
    try:
        # allow_nan=False: NaN and Infinity are not JSON to the browser's JSON.parse.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidEvent("data is nested too deeply to encode") from None


def _check_text(what: str, text: str) -> None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InvalidEvent(f"{what} is not valid unicode (it has a lone surrogate)")


def check_fields(event: object, id: object, retry: object) -> str | None:
    """InvalidEvent unless ``event``, ``id`` and ``retry`` can go on the SSE wire; the id
    as text."""
    if event is not None and not isinstance(event, str):
        raise InvalidEvent("event must be a string")
    text_id: str | None = None
    if id is not None:
        if isinstance(id, bool) or not isinstance(id, str | int):
            raise InvalidEvent("id must be a string or an integer")
        text_id = str(id)
    checked_retry = None if retry is None else check_retry(retry)
    # The SSE field rules (no line break in event or id, no NUL in id), in the wire's words.
    encode_event("", event=event, id=text_id, retry=checked_retry)
    if event is not None:
        _check_text("event", event)
    if text_id is not None:
        _check_text("id", text_id)
    return text_id


def encode_payload(
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    limit: int = 7999,
    bus: str = "PostgreSQL NOTIFY",
) -> str:
    """The plain-notification payload of one event (a JSON envelope, see
    :mod:`sserelay.wire.envelope`); InvalidEvent if it cannot go on the wire,
    PayloadTooLarge past ``limit`` bytes."""
    text_id = check_fields(event, id, retry)
    message = Message("-", data, event, text_id, retry, True)
    message._check_data()
    return message.envelope(limit, bus)


@dataclass(frozen=True)
class Message:
    """One event to publish. Build it with :meth:`build`, which checks everything."""

    channel: str
    #: ``data`` as given (any JSON value, or text).
    value: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    _checked: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
    ) -> Message:
        """The message, or InvalidChannel / InvalidEvent saying what cannot go out."""
        validate_channel(channel)
        message = cls(channel, data, event, check_fields(event, id, retry), retry, True)
        message._check_data()
        return message

    @property
    def durable_ok(self) -> bool:
        """Whether the event can go to a durable log (which gives ids and has no ``retry``)."""
        return self.id is None and self.retry is None

    def refuse_own_fields(self, log: str) -> None:
        """InvalidEvent if the event has an ``id`` or a ``retry`` of its own: a publish
        left to decide (``durable=None``) on a bus that has a log goes into ``log``, which
        numbers each channel's events itself. Sent as a plain event instead, the id would
        land among the log's (``1, 42, 2``) and send a browser resuming from it back to
        "now"; the caller asks for a plain event with ``durable=False``."""
        given = [n for n, v in (("id", self.id), ("retry", self.retry)) if v is not None]
        if given:
            what = " and ".join({"id": "an id", "retry": "a retry"}[name] for name in given)
            raise InvalidEvent(
                f"{what} of your own cannot go into {log}, which numbers each channel's "
                f"events itself: leave {' and '.join(given)} out, or send a plain event "
                "(durable=False, or sserelay publish --no-durable), which is not kept for "
                "replay"
            )

    @cached_property
    def text(self) -> str:
        """The data as text: a ``str`` as is, anything else as compact JSON."""
        value = self.value
        return value if isinstance(value, str) else _compact_json(value)

    def for_log(self) -> tuple[str, str, str | None]:
        """``(channel, text, event)`` for a durable log, which cannot store NUL (JSON
        escapes it, so structured data may carry one; text may not)."""
        text = self.text
        if "\x00" in text:
            raise InvalidEvent("data may not contain NUL: PostgreSQL text cannot store it")
        if self.event is not None and "\x00" in self.event:
            raise InvalidEvent("an SSE event name may not contain a line break or NUL")
        return self.channel, text, self.event

    def _check_data(self) -> None:
        """Data both kinds of publish can send: JSON-serialisable, valid unicode."""
        _check_text("data", self.text)

    def envelope(self, limit: int, bus: str) -> str:
        """The payload of a plain (non-durable) notification; PayloadTooLarge past
        ``limit`` bytes (``bus`` names whose limit it is)."""
        payload = self._envelope
        size = len(payload.encode("utf-8"))
        if size > limit:
            raise PayloadTooLarge(size, limit, bus)
        return payload

    @cached_property
    def _envelope(self) -> str:
        envelope: dict[str, Any] = {"data": self.value}
        if self.event is not None:
            envelope["event"] = self.event
        if self.id is not None:
            envelope["id"] = self.id
        if self.retry is not None:
            envelope["retry"] = self.retry
        return _compact_json(envelope)
