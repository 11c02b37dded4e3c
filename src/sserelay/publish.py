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

from . import sse
from .channels import validate_channel
from .durable import (
    adurable_available,
    apublish_durable,
    durable_available,
    prepare,
    publish_durable,
)
from .errors import ConfigError, InvalidEvent, PayloadTooLarge, PublishError

if TYPE_CHECKING:
    from .redis_log import RedisBus

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
    connection). ``id`` and ``retry`` are for plain events: the log numbers a channel's
    events itself, so with the schema installed they need ``durable=False`` (else
    :class:`~sserelay.InvalidEvent`: an id of the caller's among the log's would break
    ``Last-Event-ID`` resume).
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
            refuse_own_fields(id, retry, POSTGRES_LOG)
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
            refuse_own_fields(id, retry, POSTGRES_LOG)
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
    if durable is False or id is not None or retry is not None:
        # Plain, or plain unless the bus has a log (refused then): check it as plain.
        return encode_payload(data, event=event, id=id, retry=retry, limit=limit)
    # durable, or undecided until we ask the database: check what both paths need now.
    prepare(channel, data, event)
    return None


def durable_choice(durable: bool | None, id: object, retry: object) -> bool | None:
    """``durable`` resolved as far as the arguments allow (None: ask the bus)."""
    if durable and (id is not None or retry is not None):
        raise InvalidEvent("a durable event gets its id from the log and cannot carry retry")
    return durable


#: How each bus's log is named in :func:`refuse_own_fields`'s message.
POSTGRES_LOG = "this database's durable event log (sserelay migrate)"
REDIS_LOG = "the channel's Redis stream"


def refuse_own_fields(id: object, retry: object, log: str) -> None:
    """An event left to the default (``durable=None``) on a bus that has a log is durable,
    and the log numbers it: an ``id`` (or ``retry``) of the caller's is refused, not sent
    as a plain event whose id would land among the log's (``1, 42, 2``) and send a browser
    that resumes from it back to "now"."""
    given = [name for name, value in (("id", id), ("retry", retry)) if value is not None]
    if given:
        what = " and ".join({"id": "an id", "retry": "a retry"}[name] for name in given)
        raise InvalidEvent(
            f"{what} of your own cannot go into {log}, which numbers each channel's events "
            f"itself: leave {' and '.join(given)} out, or send a plain event (durable=False, "
            "or sserelay publish --no-durable), which is not kept for replay"
        )


def _redis_bus(conn: object) -> RedisBus | None:
    """``conn`` as a :class:`~sserelay.redis_log.RedisBus` if it means Redis, else None."""
    if isinstance(conn, str):
        if not conn.startswith(REDIS_SCHEMES):
            return None
    else:
        # Without the module loaded, nothing can be a RedisBus: no import for PostgreSQL.
        module = sys.modules.get("sserelay.redis_log")
        if module is None or not isinstance(conn, module.RedisBus):
            return None
    try:
        from .redis_log import RedisBus
    except ImportError as exc:
        raise ConfigError(
            f"publishing to Redis needs the redis package: pip install 'sserelay[redis]' ({exc})"
        ) from None
    return conn if isinstance(conn, RedisBus) else RedisBus(conn)
