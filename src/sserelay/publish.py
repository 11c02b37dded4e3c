"""Publishing: a safely parameterised ``pg_notify`` from Python, sync and async.

The payload is always a JSON envelope (``{"data": ..., "event": ..., "id": ...}``),
so what arrives is exactly what was published, whatever ``data`` looks like.
Inside a transaction the event goes out when it commits, and not at all if it
rolls back: that is how PostgreSQL's NOTIFY works.

Where ``sserelay migrate`` has installed the schema, publishing is durable by
default: the event goes through ``sserelay.publish`` into the log and gets an id
(see :mod:`sserelay.durable`).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from . import sse
from .channels import validate_channel
from .durable import (
    adurable_available,
    apublish_durable,
    durable_available,
    prepare,
    publish_durable,
)
from .errors import InvalidEvent, PayloadTooLarge, PublishError

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999

NOTIFY_SQL = "SELECT pg_notify(%s, %s)"

Connectable = str | psycopg.Connection[Any]
AsyncConnectable = str | psycopg.AsyncConnection[Any]


def encode_payload(
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
) -> str:
    """The NOTIFY payload for one event; raises if it cannot go on the wire."""
    envelope: dict[str, Any] = {"data": data}
    if event is not None:
        if not isinstance(event, str):
            raise InvalidEvent("event must be a string")
        envelope["event"] = event
    if id is not None:
        if isinstance(id, bool) or not isinstance(id, str | int):
            raise InvalidEvent("id must be a string or an integer")
        envelope["id"] = str(id)
    if retry is not None:
        envelope["retry"] = sse.check_retry(retry)
    # Fail here, with a clear message, rather than on every relay.
    sse.encode_event("", event=event, id=envelope.get("id"), retry=retry)
    try:
        # allow_nan=False: NaN and Infinity are not JSON to the browser's JSON.parse.
        payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    try:
        size = len(payload.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEvent("event is not valid unicode (it has a lone surrogate)") from None
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(size, MAX_PAYLOAD_BYTES)
    if "\x00" in payload:
        raise InvalidEvent("payload may not contain NUL")
    return payload


def publish(
    conn: Connectable,
    channel: str,
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    durable: bool | None = None,
) -> int | None:
    """Publish one event on ``channel`` through ``conn`` (a psycopg connection or a DSN).

    ``durable``: True appends it to the event log (see :mod:`sserelay.durable`) and
    returns its id; False sends a plain NOTIFY and returns None; None (the default)
    is durable when the database has the ``sserelay`` schema (asked once per
    connection), unless ``id`` or ``retry`` is given (the log has neither).
    """
    durable = _durable_choice(durable, id, retry)
    payload = _check(channel, data, event, id, retry, durable)
    if isinstance(conn, str):
        try:
            with psycopg.connect(conn, autocommit=True) as own:
                return publish(own, channel, data, event=event, durable=durable, id=id, retry=retry)
        except psycopg.Error as exc:
            raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
    try:
        if durable is None:
            durable = durable_available(conn)
        if durable:
            return publish_durable(conn, channel, data, event=event)
        payload = payload or encode_payload(data, event=event, id=id, retry=retry)
        conn.execute(NOTIFY_SQL, (channel, payload))
    except psycopg.Error as exc:
        raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
    return None


async def apublish(
    conn: AsyncConnectable,
    channel: str,
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    durable: bool | None = None,
) -> int | None:
    """Async twin of :func:`publish`, for a psycopg ``AsyncConnection`` or a DSN."""
    durable = _durable_choice(durable, id, retry)
    payload = _check(channel, data, event, id, retry, durable)
    if isinstance(conn, str):
        try:
            async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as own:
                return await apublish(
                    own, channel, data, event=event, durable=durable, id=id, retry=retry
                )
        except psycopg.Error as exc:
            raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
    try:
        if durable is None:
            durable = await adurable_available(conn)
        if durable:
            return await apublish_durable(conn, channel, data, event=event)
        payload = payload or encode_payload(data, event=event, id=id, retry=retry)
        await conn.execute(NOTIFY_SQL, (channel, payload))
    except psycopg.Error as exc:
        raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
    return None


def _check(
    channel: str,
    data: Any,
    event: str | None,
    id: str | int | None,
    retry: int | None,
    durable: bool | None,
) -> str | None:
    """Refuse, before connecting, what cannot be sent; the NOTIFY payload if known."""
    validate_channel(channel)
    if durable is False:
        return encode_payload(data, event=event, id=id, retry=retry)
    # durable, or undecided until we ask the database: check what both paths need now.
    prepare(channel, data, event)
    return None


def _durable_choice(durable: bool | None, id: object, retry: object) -> bool | None:
    """``durable`` resolved as far as the arguments allow (None: ask the database)."""
    if id is None and retry is None:
        return durable
    if durable:
        raise InvalidEvent("a durable event gets its id from the log and cannot carry retry")
    return False
