"""Presence on PostgreSQL: the UNLOGGED table ``sserelay.presence`` (see
``sql/*_presence.sql`` and docs/presence.md).

Each relay writes its rows with one call of ``sserelay.presence_write`` per flush (the
changed rows, and the lease of all its rows renewed once half of it has gone); readers
(``GET /presence``, :func:`sserelay.presence`, any SQL) take the rows whose lease has not
passed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import psycopg

from ...core.presence import Batch, PresenceView, Transition, view_from_rows
from ...wire.channels import validate_channel
from . import statements
from .errors import DRIVER_ERRORS, translate


class PostgresPresence:
    """A relay's presence rows, on the relay's pool (a
    :class:`~sserelay.core.presence.PresenceStore`)."""

    def __init__(self, pool: Any, relay: str, lease: float) -> None:
        self.pool = pool
        self.relay = relay
        self.lease = datetime.timedelta(seconds=lease)

    async def write(self, batch: Batch, *, events: bool) -> list[Transition]:
        changes = batch.changes
        params = (
            self.relay,
            self.lease,
            [c.channel for c in changes],
            [c.subject for c in changes],
            [c.connections for c in changes],
            events,
        )
        rows = await self._run("writing presence", statements.PRESENCE_WRITE, params)
        return [Transition(channel, kind, subject) for channel, kind, subject in rows]

    async def read(self, channel: str) -> PresenceView:
        rows = await self._run("reading presence", statements.PRESENCE_READ, (channel,))
        return view_from_rows(channel, ((s, int(n)) for s, n in rows))

    async def prune(self, *, events: bool) -> list[Transition]:
        rows = await self._run("pruning presence", statements.PRESENCE_PRUNE, (events,))
        return [Transition(channel, kind, subject) for channel, kind, subject in rows]

    async def remove(self, channels: Iterable[str] = ()) -> None:
        await self._run("removing presence", statements.PRESENCE_REMOVE, (self.relay,))

    async def _run(self, what: str, query: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            async with self.pool.connection(timeout=5) as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
        except DRIVER_ERRORS as exc:
            raise translate(exc, what, reading=True) from exc


def read_presence(conn: str | psycopg.Connection[Any], channel: str) -> PresenceView:
    """Who is on ``channel``, through a psycopg connection or a DSN."""
    validate_channel(channel)
    try:
        if isinstance(conn, str):
            with psycopg.connect(conn, autocommit=True) as own:
                rows = own.execute(statements.PRESENCE_READ, (channel,)).fetchall()
        else:
            rows = conn.execute(statements.PRESENCE_READ, (channel,)).fetchall()
    except DRIVER_ERRORS as exc:
        raise translate(exc, "reading presence", reading=True) from exc
    return view_from_rows(channel, ((s, int(n)) for s, n in rows))


async def aread_presence(conn: str | psycopg.AsyncConnection[Any], channel: str) -> PresenceView:
    """The async twin of :func:`read_presence`."""
    validate_channel(channel)
    try:
        if isinstance(conn, str):
            async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as own:
                cursor = await own.execute(statements.PRESENCE_READ, (channel,))
                rows = await cursor.fetchall()
        else:
            cursor = await conn.execute(statements.PRESENCE_READ, (channel,))
            rows = await cursor.fetchall()
    except DRIVER_ERRORS as exc:
        raise translate(exc, "reading presence", reading=True) from exc
    return view_from_rows(channel, ((s, int(n)) for s, n in rows))
