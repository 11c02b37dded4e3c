"""The Python publish API: :func:`publish` and :func:`apublish`, on whichever bus they are
given.

- A psycopg connection or a PostgreSQL DSN: :mod:`sserelay.bus.postgres.publish` (inside
  a transaction the event goes out on commit, never on rollback).
- A Redis URL (``redis://``, ``rediss://``, ``unix://``) or a
  :class:`~sserelay.bus.redis.publish.RedisBus`: :mod:`sserelay.bus.redis.publish`.

The event is checked and encoded once (:class:`~sserelay.wire.message.Message`), before
anything is sent; the bus decides once whether it goes durable.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import psycopg

from ..errors import ConfigError
from ..wire.message import Message, encode_payload
from .postgres import publish as postgres

if TYPE_CHECKING:
    from .redis.publish import RedisBus

__all__ = ["apublish", "apublish_durable", "encode_payload", "publish", "publish_durable"]

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = postgres.MAX_PAYLOAD_BYTES

Connectable: TypeAlias = "str | psycopg.Connection[Any] | RedisBus"
AsyncConnectable: TypeAlias = "str | psycopg.AsyncConnection[Any] | RedisBus"
#: URL schemes that mean Redis rather than PostgreSQL (``unix://``: redis-py's socket form).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


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
    or a Redis URL or :class:`~sserelay.bus.redis.publish.RedisBus`).

    ``durable``: True appends it to the event log and returns its id; False sends a
    plain notification and returns None; None (the default) is durable when the bus has
    a log (on PostgreSQL: the ``sserelay`` schema, asked once per connection), unless
    ``id`` or ``retry`` is given (the log has neither).
    """
    message = Message.build(channel, data, event=event, id=id, retry=retry)
    bus = as_redis_bus(conn)
    if bus is None:
        return postgres.publish(cast("str | psycopg.Connection[Any]", conn), message, durable)
    if bus is conn:
        return bus.send(message, durable)
    with bus:
        return bus.send(message, durable)


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
    Redis URL or :class:`~sserelay.bus.redis.publish.RedisBus`)."""
    message = Message.build(channel, data, event=event, id=id, retry=retry)
    bus = as_redis_bus(conn)
    if bus is None:
        target = cast("str | psycopg.AsyncConnection[Any]", conn)
        return await postgres.apublish(target, message, durable)
    if bus is conn:
        return await bus.asend(message, durable)
    async with bus:
        return await bus.asend(message, durable)


def publish_durable(
    conn: str | psycopg.Connection[Any], channel: str, data: Any, *, event: str | None = None
) -> int:
    """Append an event to ``channel``'s PostgreSQL log and notify it; return its id.

    ``conn`` is a DSN (published and committed at once) or a psycopg connection (the
    event commits, or vanishes, with its transaction). A non-``str`` ``data`` is stored
    as JSON. Raises :class:`~sserelay.SchemaMissing` if ``sserelay migrate`` has not run.
    """
    event_id = postgres.publish(conn, Message.build(channel, data, event=event), True)
    assert event_id is not None  # durable
    return event_id


async def apublish_durable(
    conn: str | psycopg.AsyncConnection[Any], channel: str, data: Any, *, event: str | None = None
) -> int:
    """Async twin of :func:`publish_durable`, for a psycopg ``AsyncConnection`` or a DSN."""
    event_id = await postgres.apublish(conn, Message.build(channel, data, event=event), True)
    assert event_id is not None  # durable
    return event_id


def as_redis_bus(conn: object) -> RedisBus | None:
    """``conn`` as a :class:`~sserelay.bus.redis.publish.RedisBus` if it means Redis."""
    if isinstance(conn, str):
        if not conn.startswith(REDIS_SCHEMES):
            return None
    else:
        # Without the module loaded, nothing can be a RedisBus: no import for PostgreSQL.
        module = sys.modules.get("sserelay.bus.redis.publish")
        if module is None or not isinstance(conn, module.RedisBus):
            return None
    try:
        from .redis.publish import RedisBus
    except ImportError as exc:
        raise ConfigError(
            f"publishing to Redis needs the redis package: pip install 'sserelay[redis]' ({exc})"
        ) from None
    return conn if isinstance(conn, RedisBus) else RedisBus(conn)
