"""Durable channels from Python: publish into the event log, read it back, prune it.

A durable publish calls the SQL function ``sserelay.publish(channel, data, event)``
(installed by ``sserelay migrate``), which appends the event to ``sserelay.events`` and
``pg_notify``-s it in the same transaction, and returns the event's id. Ids count 1, 2,
3, ... per channel in commit order, so a reader that resumes after id N misses nothing.
See ``docs/durable.md``.
"""

from __future__ import annotations

import datetime
import json
import weakref
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg import errors as pg_errors

from ...errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidEvent,
    PublishError,
    SchemaMissing,
    SseRelayError,
)
from ...wire.channels import validate_channel
from .schema import PUBLISH_FUNCTION

PUBLISH_SQL = "SELECT sserelay.publish(%s::text, %s::text, %s::text)"
AVAILABLE_SQL = "SELECT to_regprocedure(%s) IS NOT NULL"
PRUNE_SQL = "SELECT sserelay.prune(%s::interval, %s::integer)"
READ_AFTER_SQL = (
    "SELECT id, event, data, created_at FROM sserelay.events"
    " WHERE channel = %s AND id > %s ORDER BY id LIMIT %s"
)
READ_LAST_SQL = (
    "SELECT id, event, data, created_at FROM ("
    "SELECT id, event, data, created_at FROM sserelay.events"
    " WHERE channel = %s ORDER BY id DESC LIMIT %s) AS newest ORDER BY id"
)
OLDEST_ID_SQL = "SELECT min(id) FROM sserelay.events WHERE channel = %s"
LAST_ID_SQL = "SELECT last_id FROM sserelay.channels WHERE channel = %s"

Connectable = str | psycopg.Connection[Any]
AsyncConnectable = str | psycopg.AsyncConnection[Any]

#: The errors PostgreSQL raises when the schema, a table or the function is missing.
_MISSING = (pg_errors.InvalidSchemaName, pg_errors.UndefinedTable, pg_errors.UndefinedFunction)

# Whether a connection's database has the schema, asked once per connection object.
_available: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


class LogEvent(NamedTuple):
    """One row of the log, as the read functions return it."""

    id: int
    event: str | None
    data: str
    created_at: datetime.datetime


def encode_data(data: Any) -> str:
    """The text stored for ``data``: a ``str`` as is, anything else as compact JSON."""
    if isinstance(data, str):
        text = data
    else:
        try:
            # allow_nan=False: NaN and Infinity are not JSON to the browser's JSON.parse.
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    if "\x00" in text:
        raise InvalidEvent("data may not contain NUL: PostgreSQL text cannot store it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("data is not valid unicode (a lone surrogate)") from None
    return text


def prepare(channel: str, data: Any, event: str | None) -> tuple[str, str, str | None]:
    """Check the arguments of a durable publish; return them as ``sserelay.publish`` takes them."""
    if event is not None:
        if not isinstance(event, str):
            raise InvalidEvent("event must be a string")
        if "\r" in event or "\n" in event or "\x00" in event:
            raise InvalidEvent("an SSE event name may not contain a line break or NUL")
    return validate_channel(channel), encode_data(data), event


def _publish_error(exc: psycopg.Error, channel: str) -> SseRelayError:
    if isinstance(exc, _MISSING):
        return SchemaMissing(str(exc).splitlines()[0])
    return PublishError(f"publishing on {channel!r} failed: {exc}")


def _read_error(exc: psycopg.Error, channel: str) -> SseRelayError:
    if isinstance(exc, _MISSING):
        return SchemaMissing(str(exc).splitlines()[0])
    return BrokerUnavailable(f"reading the log of {channel!r} failed: {exc}")


def _id(row: tuple[Any, ...] | None) -> int:
    assert row is not None  # a SELECT of one function call returns one row
    return int(row[0])


# -- publishing ----------------------------------------------------------------------


def publish_durable(conn: Connectable, channel: str, data: Any, *, event: str | None = None) -> int:
    """Append an event to ``channel``'s log and notify it; return its id.

    ``conn`` is a DSN (published and committed at once) or a psycopg connection (the
    event commits, or vanishes, with its transaction). A non-``str`` ``data`` is stored
    as JSON. Raises :class:`SchemaMissing` if ``sserelay migrate`` has not been run.
    """
    params = prepare(channel, data, event)
    try:
        if isinstance(conn, str):
            with psycopg.connect(conn, autocommit=True) as own:
                return _id(own.execute(PUBLISH_SQL, params).fetchone())
        return _id(conn.execute(PUBLISH_SQL, params).fetchone())
    except psycopg.Error as exc:
        if not isinstance(conn, str):
            _available.pop(conn, None)
        raise _publish_error(exc, channel) from exc


async def apublish_durable(
    conn: AsyncConnectable, channel: str, data: Any, *, event: str | None = None
) -> int:
    """Async twin of :func:`publish_durable`, for a psycopg ``AsyncConnection`` or a DSN."""
    params = prepare(channel, data, event)
    try:
        if isinstance(conn, str):
            async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as own:
                return _id(await (await own.execute(PUBLISH_SQL, params)).fetchone())
        return _id(await (await conn.execute(PUBLISH_SQL, params)).fetchone())
    except psycopg.Error as exc:
        if not isinstance(conn, str):
            _available.pop(conn, None)
        raise _publish_error(exc, channel) from exc


def durable_available(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``'s database has ``sserelay.publish`` (asked once per connection)."""
    known = _available.get(conn)
    if known is None:
        known = bool(_id(conn.execute(AVAILABLE_SQL, (PUBLISH_FUNCTION,)).fetchone()))
        _available[conn] = known
    return known


async def adurable_available(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Async twin of :func:`durable_available`."""
    known = _available.get(conn)
    if known is None:
        cursor = await conn.execute(AVAILABLE_SQL, (PUBLISH_FUNCTION,))
        known = bool(_id(await cursor.fetchone()))
        _available[conn] = known
    return known


# -- reading (for the relay's replay) ------------------------------------------------


def _check_bound(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


async def read_after(
    conn: psycopg.AsyncConnection[Any], channel: str, after_id: int, limit: int
) -> list[LogEvent]:
    """Up to ``limit`` events of ``channel`` with ids above ``after_id``, oldest first."""
    params = (validate_channel(channel), _check_bound("after_id", after_id, 0))
    try:
        cursor = await conn.execute(READ_AFTER_SQL, (*params, _check_bound("limit", limit, 1)))
        return [LogEvent(*row) for row in await cursor.fetchall()]
    except psycopg.Error as exc:
        raise _read_error(exc, channel) from exc


async def read_last(conn: psycopg.AsyncConnection[Any], channel: str, n: int) -> list[LogEvent]:
    """The newest ``n`` events of ``channel``, oldest first."""
    params = (validate_channel(channel), _check_bound("n", n, 0))
    try:
        cursor = await conn.execute(READ_LAST_SQL, params)
        return [LogEvent(*row) for row in await cursor.fetchall()]
    except psycopg.Error as exc:
        raise _read_error(exc, channel) from exc


async def _scalar(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, channel: str
) -> int | None:
    try:
        cursor = await conn.execute(query, (validate_channel(channel),))
        row = await cursor.fetchone()
    except psycopg.Error as exc:
        raise _read_error(exc, channel) from exc
    return None if row is None or row[0] is None else int(row[0])


async def oldest_id(conn: psycopg.AsyncConnection[Any], channel: str) -> int | None:
    """The id of the oldest event still in ``channel``'s log (None if it is empty)."""
    return await _scalar(conn, OLDEST_ID_SQL, channel)


async def last_id(conn: psycopg.AsyncConnection[Any], channel: str) -> int | None:
    """The last id handed out on ``channel`` (None if nothing was ever published there)."""
    return await _scalar(conn, LAST_ID_SQL, channel)


# -- retention -----------------------------------------------------------------------


def prune(
    conn: Connectable,
    *,
    max_age: datetime.timedelta | None = None,
    max_count: int | None = None,
) -> int | None:
    """Delete events older than ``max_age`` and/or beyond the newest ``max_count`` of each
    channel (``sserelay.prune``). Returns how many went, or None if another prune was
    running (only one runs at a time; try again later)."""
    if max_age is None and max_count is None:
        raise ConfigError("prune needs max_age and/or max_count")
    if max_age is not None and max_age < datetime.timedelta(0):
        raise ConfigError(f"max_age must not be negative, not {max_age}")
    if max_count is not None:
        _check_bound("max_count", max_count, 0)
    params = (max_age, max_count)
    try:
        if isinstance(conn, str):
            with psycopg.connect(conn, autocommit=True) as own:
                row = own.execute(PRUNE_SQL, params).fetchone()
        else:
            row = conn.execute(PRUNE_SQL, params).fetchone()
    except psycopg.Error as exc:
        if isinstance(exc, _MISSING):
            raise SchemaMissing(str(exc).splitlines()[0]) from exc
        raise BrokerUnavailable(f"pruning the event log failed: {exc}") from exc
    return None if row is None or row[0] is None else int(row[0])
