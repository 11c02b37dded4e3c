"""Revocations on PostgreSQL: the table ``sserelay.revocations``, the function
``sserelay.revoke(...)`` that fills it and NOTIFYs ``sserelay.revoked`` (migration 5),
and each relay's feed of them (:class:`PostgresRevocations`).

The feed holds a connection of its own (LISTEN only, so a few bytes an hour), not the
listener's: it LISTENs first, then reads the table, so no revocation falls between the
two; after a lost connection it does both again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from ...access.revocations import KINDS, Revocation
from ...errors import BrokerUnavailable
from ..control import CONTROL_CHANNEL, OnChange, RevocationFeed
from ..listener import ProbeFailed
from .errors import translate
from .listener import KEEPALIVE_PARAMS

APPLICATION_NAME = "sserelay-revocations"

_LOAD = (
    "SELECT kind, value, extract(epoch FROM revoked_at)::float8"
    " FROM sserelay.revocations WHERE revoked_at >= now() - make_interval(secs => %s)"
)
_PRUNE = "DELETE FROM sserelay.revocations WHERE revoked_at < now() - make_interval(secs => %s)"
#: One statement per kind: the argument's name is ours, never the caller's.
_REVOKE = {
    kind: sql.SQL(
        "SELECT extract(epoch FROM sserelay.revoke({} => %s, keep => make_interval(secs => %s)))"
        "::float8"
    ).format(sql.Identifier(kind))
    for kind in KINDS
}


def revoke_statement(kind: str) -> str:
    """The statement revoking a ``kind`` (parameters: the value, seconds kept), as text
    (for connections that are not psycopg's, Django's)."""
    return _REVOKE[kind].as_string(None)


def revoke_on(conn: str | psycopg.Connection[Any], kind: str, value: str, keep: float) -> float:
    """``sserelay.revoke`` on ``conn`` (a DSN: committed at once; a connection: with its
    transaction); the revocation's time."""
    if isinstance(conn, str):
        try:
            with psycopg.connect(conn, autocommit=True) as own:
                return revoke_on(own, kind, value, keep)
        except psycopg.Error as exc:
            raise translate(exc, "revoking") from exc
    try:
        row = conn.execute(_REVOKE[kind], (value, keep)).fetchone()
    except psycopg.Error as exc:
        raise translate(exc, "revoking") from exc
    assert row is not None
    return float(row[0])


class PostgresRevocations(RevocationFeed):
    """A relay's feed of revocations from PostgreSQL (see the module docstring)."""

    errors = (psycopg.Error, OSError, TimeoutError, PoolTimeout, ProbeFailed, BrokerUnavailable)

    def __init__(self, dsn: str, on_change: OnChange, **options: Any) -> None:
        super().__init__(on_change, **options)
        self.dsn = dsn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        async with asyncio.timeout(self.timeout + 1):  # not wait_for: see Listener._idle
            return await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name=APPLICATION_NAME,
                connect_timeout=max(1, int(self.timeout)),
                **KEEPALIVE_PARAMS,
            )

    async def _session(self) -> None:
        conn = await self._connect()
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CONTROL_CHANNEL)))
            while True:
                self._loaded(await self._load(conn))
                # The generator ends after its timeout: then read the table again (and
                # find a dead connection, if keepalives have not).
                async for notify in conn.notifies(timeout=self._next_reload()):
                    self._notified(notify.payload)
        finally:
            await conn.close()

    async def _load(self, conn: psycopg.AsyncConnection[Any]) -> list[Revocation]:
        try:
            async with asyncio.timeout(self.timeout):
                await conn.execute(_PRUNE, (self.ttl,))
                cur = await conn.execute(_LOAD, (self.ttl,))
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise translate(exc, "reading the revocations", reading=True) from exc
        return [Revocation(kind, value, at) for kind, value, at in rows]

    async def revoke(self, kind: str, value: str) -> float:
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect()
                try:
                    cur = await conn.execute(_REVOKE[kind], (value, self.ttl))
                    row = await cur.fetchone()
                finally:
                    await conn.close()
        except psycopg.Error as exc:
            raise translate(exc, "revoking", reading=True) from exc
        assert row is not None
        return float(row[0])
