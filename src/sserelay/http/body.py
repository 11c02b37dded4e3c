"""The body of ``POST /publish``: JSON or a form, parsed into one checked
:class:`~sserelay.wire.message.Message`, or an :class:`~sserelay.errors.HttpError`
(400, 415) whose one-line reason says what is wrong.

A body carries ``channel``, ``data`` and optionally ``event`` and ``id``: as a JSON
object (``data`` any JSON value), or as a form (``data`` text). A field given twice is
refused, in JSON as in a form. Every cost is linear in the body's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from ..errors import HttpError, InvalidChannel, InvalidEvent
from ..wire.message import Message

FIELDS = ("channel", "data", "event", "id")
MAX_FORM_FIELDS = 16

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "invalid request"


def query_params(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=256)
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "query string is not valid") from None


def content_type(headers: Mapping[str, str]) -> str:
    """``application/json`` or the form type, else HttpError(415); charset must be UTF-8."""
    raw = headers.get("content-type")
    if raw is None:
        raise HttpError(415, f"no Content-Type; send {JSON_TYPE} or {FORM_TYPE}")
    kind, *params = (part.strip() for part in raw.split(";"))
    kind = kind.lower()
    if kind not in (JSON_TYPE, FORM_TYPE):
        raise HttpError(
            415, f"Content-Type {kind[:60]!r} not supported; send {JSON_TYPE} or {FORM_TYPE}"
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise HttpError(415, f"charset {value.strip()[:20]!r} not supported; send UTF-8")
    return kind


def parse(kind: str, body: bytes) -> Message:
    """The message in ``body``, checked once, or HttpError(400) with a one-line reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid UTF-8") from None
    fields = _json_fields(text) if kind == JSON_TYPE else _form_fields(text)
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise HttpError(
            400, f"unknown field {unknown[0][:40]!r}; a message has {', '.join(FIELDS)}"
        )
    if "channel" not in fields:
        raise HttpError(400, "no channel given")
    if "data" not in fields:
        raise HttpError(400, "no data given")
    channel = fields["channel"]
    # An empty event or id is none (a form cannot leave a field out and keep it).
    event = fields.get("event") or None
    event_id = fields.get("id")
    if event_id == "":
        event_id = None
    try:
        return Message.build(channel, fields["data"], event=event, id=event_id)
    except InvalidChannel as exc:
        shown = channel[:80] if isinstance(channel, str) else channel
        raise HttpError(400, f"invalid channel {shown!r}: {exc}") from None
    except InvalidEvent as exc:
        raise HttpError(400, _one_line(str(exc))) from None


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as one JSON object (no field twice), or HttpError(400) saying why not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid UTF-8") from None
    return _json_fields(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Object(dict[str, Any]):
    """A JSON object that remembers the first name given twice in it, if any."""

    twice: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for name, value in pairs:
        if name in obj and obj.twice is None:
            obj.twice = name
        obj[name] = value
    return obj


def _json_fields(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object)
    except RecursionError:
        raise HttpError(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, over-long integers
        raise HttpError(400, f"invalid JSON: {_one_line(str(exc))}") from None
    if not isinstance(value, dict):
        raise HttpError(400, f"the JSON body must be an object, not {_json_type(value)}")
    if isinstance(value, _Object) and value.twice is not None:
        # The last must not win silently: a proxy and the relay could read different fields.
        raise HttpError(400, f"field {value.twice[:40]!r} given twice")
    return dict(value)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _form_fields(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise HttpError(400, "invalid form: not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise HttpError(400, f"invalid form: more than {MAX_FORM_FIELDS} fields") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise HttpError(400, f"field {name[:40]!r} given twice")
        fields[name] = value
    if not fields and text.strip():
        raise HttpError(400, "invalid form: no name=value field")
    return fields
