"""Publishing: a safely parameterised ``pg_notify`` from Python, sync and async.

The payload is always a JSON envelope (``{"data": ..., "event": ..., "id": ...}``),
so what arrives is exactly what was published, whatever ``data`` looks like.
Inside a transaction the event goes out when it commits, and not at all if it
rolls back: that is how PostgreSQL's NOTIFY works.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from . import sse
from .channels import validate_channel
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
        payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    size = len(payload.encode("utf-8", "surrogatepass"))
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
) -> None:
    """Publish one event on ``channel`` through ``conn`` (a psycopg connection or a DSN)."""
    params = (validate_channel(channel), encode_payload(data, event=event, id=id, retry=retry))
    try:
        if isinstance(conn, str):
            with psycopg.connect(conn, autocommit=True) as own:
                own.execute(NOTIFY_SQL, params)
        else:
            conn.execute(NOTIFY_SQL, params)
    except psycopg.Error as exc:
        raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc


async def apublish(
    conn: AsyncConnectable,
    channel: str,
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
) -> None:
    """Async twin of :func:`publish`, for a psycopg ``AsyncConnection`` or a DSN."""
    params = (validate_channel(channel), encode_payload(data, event=event, id=id, retry=retry))
    try:
        if isinstance(conn, str):
            async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as own:
                await own.execute(NOTIFY_SQL, params)
        else:
            await conn.execute(NOTIFY_SQL, params)
    except psycopg.Error as exc:
        raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
