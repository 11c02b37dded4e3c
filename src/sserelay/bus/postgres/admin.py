"""Small administrative helpers on a PostgreSQL server: a raw notification, a throwaway
database, a libpq DSN from keyword parameters (for :mod:`sserelay.testing` and the
Django integration, which then need no driver of their own)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import statements


async def notify(dsn: str, channel: str, payload: str) -> None:
    """Send one raw notification from a connection of its own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(statements.NOTIFY, (channel, payload))


@contextlib.contextmanager
def temporary_database(dsn: str, *, migrate: bool = False) -> Iterator[str]:
    """A fresh database on ``dsn``'s server, dropped on exit; yields its DSN.

    ``migrate=True`` installs the durable-channel schema in it first.
    """
    name = f"sserelay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        db = make_conninfo(dsn, dbname=name)
        if migrate:
            from .schema import migrate as run_migrations

            run_migrations(db)
        yield db
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def libpq_dsn(params: Mapping[str, Any]) -> str:
    """A DSN from connection parameters (only libpq's own keywords are kept: a
    framework's cursor factory or adapters are not libpq's business)."""
    keywords = frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())
    clean = {
        key: str(value)
        for key, value in params.items()
        if key in keywords and value is not None and value != ""
    }
    return make_conninfo("", **clean)


def is_psycopg_connection(conn: object) -> bool:
    """Whether ``conn`` is a psycopg 3 (sync) connection (Django's ``connection.connection``)."""
    return isinstance(conn, psycopg.Connection)


def dsn_parameters(dsn: str) -> dict[str, Any]:
    """The parameters of a PostgreSQL URL or libpq DSN (those it sets)."""
    from psycopg.conninfo import conninfo_to_dict

    return {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
