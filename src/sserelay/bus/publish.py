"""Publishing: a safely parameterised ``pg_notify`` from Python, sync and async.

The payload is always a JSON envelope (``{"data": ..., "event": ..., "id": ...}``),
so what arrives is exactly what was published, whatever ``data`` looks like.
Inside a transaction the event goes out when it commits, and not at all if it
rolls back: that is how PostgreSQL's NOTIFY works.

Where ``sserelay migrate`` has installed the schema, publishing is durable by
default: the event goes through ``sserelay.publish`` into the log and gets an id
(see :mod:`sserelay.durable`).

Given a Redis URL (``redis://``, ``rediss://``, ``unix://``) or a
:class:`sserelay.redis_log.RedisBus` instead of a PostgreSQL connection, the same calls
publish on Redis: durable by default (into the channel's stream, returning the entry id),
a plain ``PUBLISH`` with ``durable=False``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import psycopg

from ..errors import ConfigError, InvalidEvent, PayloadTooLarge, PublishError
from ..wire import sse
from ..wire.channels import validate_channel
from .postgres.durable import (
    adurable_available,
    apublish_durable,
    durable_available,
    prepare,
    publish_durable,
)

if TYPE_CHECKING:
    from .redis.log import RedisBus

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999

NOTIFY_SQL = "SELECT pg_notify(%s, %s)"

Connectable: TypeAlias = "str | psycopg.Connection[Any] | RedisBus"
AsyncConnectable: TypeAlias = "str | psycopg.AsyncConnection[Any] | RedisBus"
#: URL schemes that mean Redis rather than PostgreSQL (``unix://``: redis-py's socket form).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def encode_payload(
    data: Any,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    limit: int = MAX_PAYLOAD_BYTES,
) -> str:
    """The NOTIFY payload for one event; raises if it cannot go on the wire (or is over
    ``limit`` bytes)."""
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
    if size > limit:
        raise PayloadTooLarge(size, limit)
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
) -> int | str | None:
    """Publish one event on ``channel`` through ``conn`` (a psycopg connection or a DSN;
    or a Redis URL or :class:`~sserelay.redis_log.RedisBus`, see the module docstring).

    ``durable``: True appends it to the event log (see :mod:`sserelay.durable`) and
    returns its id; False sends a plain NOTIFY and returns None; None (the default)
    is durable when the database has the ``sserelay`` schema (asked once per
    connection), unless ``id`` or ``retry`` is given (the log has neither).
    """
    bus = _redis_bus(conn)
    if bus is not None:
        if bus is conn:
            return bus.publish(channel, data, event=event, id=id, retry=retry, durable=durable)
        with bus:
            return bus.publish(channel, data, event=event, id=id, retry=retry, durable=durable)
    conn = cast("str | psycopg.Connection[Any]", conn)
    durable = durable_choice(durable, id, retry)
    payload = check_publish(channel, data, event, id, retry, durable)
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
) -> int | str | None:
    """Async twin of :func:`publish`, for a psycopg ``AsyncConnection`` or a DSN (or a
    Redis URL or :class:`~sserelay.redis_log.RedisBus`)."""
    bus = _redis_bus(conn)
    if bus is not None:
        if bus is conn:
            return await bus.apublish(
                channel, data, event=event, id=id, retry=retry, durable=durable
            )
        async with bus:
            return await bus.apublish(
                channel, data, event=event, id=id, retry=retry, durable=durable
            )
    conn = cast("str | psycopg.AsyncConnection[Any]", conn)
    durable = durable_choice(durable, id, retry)
    payload = check_publish(channel, data, event, id, retry, durable)
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


def check_publish(
    channel: str,
    data: Any,
    event: str | None,
    id: str | int | None,
    retry: int | None,
    durable: bool | None,
    limit: int = MAX_PAYLOAD_BYTES,
) -> str | None:
    """Refuse, before connecting, what cannot be sent; the raw payload if known."""
    validate_channel(channel)
    if durable is False:
        return encode_payload(data, event=event, id=id, retry=retry, limit=limit)
    # durable, or undecided until we ask the database: check what both paths need now.
    prepare(channel, data, event)
    return None


def durable_choice(durable: bool | None, id: object, retry: object) -> bool | None:
    """``durable`` resolved as far as the arguments allow (None: ask the database)."""
    if id is None and retry is None:
        return durable
    if durable:
        raise InvalidEvent("a durable event gets its id from the log and cannot carry retry")
    return False


def _redis_bus(conn: object) -> RedisBus | None:
    """``conn`` as a :class:`~sserelay.redis_log.RedisBus` if it means Redis, else None."""
    if isinstance(conn, str):
        if not conn.startswith(REDIS_SCHEMES):
            return None
    else:
        # Without the module loaded, nothing can be a RedisBus: no import for PostgreSQL.
        module = sys.modules.get("sserelay.bus.redis.log")
        if module is None or not isinstance(conn, module.RedisBus):
            return None
    try:
        from .redis.log import RedisBus
    except ImportError as exc:
        raise ConfigError(
            f"publishing to Redis needs the redis package: pip install 'sserelay[redis]' ({exc})"
        ) from None
    return conn if isinstance(conn, RedisBus) else RedisBus(conn)
