"""The PostgreSQL event log (``sserelay.events``): reading it, pruning it.

- The relay's :class:`PostgresLog` (an :class:`~sserelay.core.protocols.EventLog`): a
  small pool, reads batched and shared (a thousand clients reconnecting at one id cost
  one query per batch), heads of many channels in one query.
- Functions on a connection of the caller's (:func:`read_after`, :func:`read_last`,
  :func:`oldest_id`, :func:`last_id`, :func:`prune`) for applications and tools.

Ids count 1, 2, 3, ... per channel in commit order, with no gap but where retention
deleted a prefix: so "what is missing after N" is arithmetic (:meth:`PostgresLog.gap_after`).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from ...core.protocols import Notified
from ...core.reads import SharedReads
from ...errors import ConfigError
from ...wire.channels import validate_channel
from ...wire.ids import IntegerIds
from . import statements
from .errors import DRIVER_ERRORS, translate, translated

log = logging.getLogger("sserelay.postgres")

T = TypeVar("T")
Connectable = str | psycopg.Connection[Any]


class LogEvent(NamedTuple):
    """One row of the log, as the read functions return it."""

    id: int
    event: str | None
    data: str
    created_at: datetime.datetime


def _check_bound(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


# -- on a connection of the caller's -------------------------------------------------


async def read_after(
    conn: psycopg.AsyncConnection[Any], channel: str, after_id: int, limit: int
) -> list[LogEvent]:
    """Up to ``limit`` events of ``channel`` with ids above ``after_id``, oldest first."""
    params = (validate_channel(channel), _check_bound("after_id", after_id, 0))
    with translated(f"reading the log of {channel!r}", reading=True):
        cursor = await conn.execute(
            statements.READ_AFTER, (*params, _check_bound("limit", limit, 1))
        )
        return [LogEvent(*row) for row in await cursor.fetchall()]


async def read_last(conn: psycopg.AsyncConnection[Any], channel: str, n: int) -> list[LogEvent]:
    """The newest ``n`` events of ``channel``, oldest first."""
    params = (validate_channel(channel), _check_bound("n", n, 0))
    with translated(f"reading the log of {channel!r}", reading=True):
        cursor = await conn.execute(statements.READ_LAST, params)
        return [LogEvent(*row) for row in await cursor.fetchall()]


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str, channel: str) -> int | None:
    with translated(f"reading the log of {channel!r}", reading=True):
        cursor = await conn.execute(query, (validate_channel(channel),))
        row = await cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def oldest_id(conn: psycopg.AsyncConnection[Any], channel: str) -> int | None:
    """The id of the oldest event still in ``channel``'s log (None if it is empty)."""
    return await _scalar(conn, statements.OLDEST_ID, channel)


async def last_id(conn: psycopg.AsyncConnection[Any], channel: str) -> int | None:
    """The last id handed out on ``channel`` (None if nothing was ever published there)."""
    return await _scalar(conn, statements.LAST_ID, channel)


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
    with translated("pruning the event log", reading=True):
        if isinstance(conn, str):
            with psycopg.connect(conn, autocommit=True) as own:
                row = own.execute(statements.PRUNE, params).fetchone()
        else:
            row = conn.execute(statements.PRUNE, params).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def parse_notification(payload: str) -> Notified | None:
    """What ``sserelay.publish`` notifies (``{"seq": N, "event": ..., "data": ...}``, or
    ``{"seq": N, "large": true}``), parsed; None if ``payload`` is not that."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return None
    data, event = obj.get("data"), obj.get("event")
    if obj.get("large") or not isinstance(data, str):
        data = None
    return Notified(seq, seq - 1, event if isinstance(event, str) else None, data)


# -- the relay's log ------------------------------------------------------------------


class PostgresLog(IntegerIds, SharedReads):
    """The :class:`~sserelay.core.protocols.EventLog` on PostgreSQL, for one relay: a small
    pool for reads, publishes (``POST /publish``) and pruning."""

    def __init__(self, dsn: str, *, batch: int = 500, max_connections: int = 4) -> None:
        super().__init__()
        self.batch = batch
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=0,
            max_size=max_connections,
            max_idle=60,
            # After an outage the pool may hold dead connections: test each one lent out.
            check=AsyncConnectionPool.check_connection,
            open=False,
            kwargs={"autocommit": True, "application_name": "sserelay-reader"},
            name="sserelay-reader",
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=2)

    async def _query(self, what: str, call: Callable[[Any], Awaitable[T]]) -> T:
        try:
            async with self.pool.connection(timeout=10) as conn:
                return await call(conn)
        except DRIVER_ERRORS as exc:
            raise translate(exc, what, reading=True) from exc

    async def installed(self) -> bool:
        async def ask(conn: Any) -> bool:
            cursor = await conn.execute(statements.AVAILABLE, (statements.PUBLISH_FUNCTION,))
            row = await cursor.fetchone()
            if not (row and row[0]):
                return False
            cursor = await conn.execute(statements.AVAILABLE, (statements.NOTIFY_FUNCTION,))
            row = await cursor.fetchone()
            if not (row and row[0]):
                log.warning(
                    "the sserelay schema is older than version 3: durable events are notified "
                    "on their channel, where they look like plain text; run `sserelay migrate`"
                )
            return True

        return await self._shared(("installed",), lambda: self._query("reading the schema", ask))

    async def heads(self, channels: Sequence[str]) -> dict[str, int]:
        wanted = sorted(set(channels))

        async def ask(conn: Any) -> dict[str, int]:
            cursor = await conn.execute(statements.LAST_IDS, (wanted,))
            found = {channel: int(last) for channel, last in await cursor.fetchall()}
            return {channel: found.get(channel, 0) for channel in wanted}

        key = ("heads", *wanted)
        return await self._shared(key, lambda: self._query("reading the log's heads", ask))

    async def oldest(self, channel: str) -> int | None:
        async def ask(conn: Any) -> int | None:
            return await oldest_id(conn, channel)

        what = f"reading the log of {channel!r}"
        return await self._shared(("oldest", channel), lambda: self._query(what, ask))

    async def read_after(self, channel: str, after: int, *, shared: bool = True) -> list[LogEvent]:
        async def ask(conn: Any) -> list[LogEvent]:
            return await read_after(conn, channel, after, self.batch)

        what = f"reading the log of {channel!r}"
        if not shared:
            return await self._unshared(lambda: self._query(what, ask))
        return await self._shared(("after", channel, after), lambda: self._query(what, ask))

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        # Ids are contiguous: events after `after` are gone iff the oldest left is further.
        first = await self.oldest(channel)
        if first is None or first > after + 1:
            return live if first is None else first - 1
        return None

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        return max(live - n, floor)

    def previous(self, row: Any) -> int:
        return int(row.id) - 1

    async def prune(self, max_age: datetime.timedelta | None, max_count: int | None) -> int:
        async def run(conn: Any) -> int:
            cursor = await conn.execute(statements.PRUNE, (max_age, max_count))
            row = await cursor.fetchone()
            return int(row[0]) if row is not None and row[0] is not None else 0

        return await self._query("pruning the event log", run)
