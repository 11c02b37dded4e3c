"""Publishing on PostgreSQL: the raw-or-durable decision and the statement, made once.

Every publish on PostgreSQL comes here, whoever makes it: :func:`sserelay.publish` on a
psycopg connection or a DSN, the relay's ``POST /publish`` on a pooled connection, and
the Django integration on Django's own connection. What differs is only how a
statement runs, which a :class:`Connector` (or :class:`AsyncConnector`) provides, as
procrastinate's connectors do.

- ``durable=True``: the event goes through ``sserelay.publish`` into the log (and is
  notified on commit); returns its id.
- ``durable=False``: a plain ``pg_notify`` of the event's JSON envelope; returns None.
- ``durable=None`` (the default): durable where the schema is installed (asked once per
  connection), else raw. The log numbers a channel's events itself, so an event with its
  own ``id`` or a ``retry`` is raw only without the schema: with it, it is refused
  (:meth:`~sserelay.wire.message.Message.refuse_own_fields`), since its id among the log's
  would break ``Last-Event-ID`` resume; ``durable=False`` sends it raw on purpose.

Inside a transaction the event goes out when it commits, never if it rolls back.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from ...errors import InvalidEvent
from ...wire.message import Message
from . import statements
from .errors import DRIVER_ERRORS, sqlstate, translate

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999
BUS = "PostgreSQL NOTIFY"

Row = tuple[Any, ...] | None


class Connector(Protocol):
    """Runs a statement on one database connection and returns its first row."""

    #: What the "is the schema installed" answer is remembered on (the connection).
    @property
    def key(self) -> object: ...

    #: Where to install the schema, and how, for a SchemaMissing message.
    where: str
    hint: str

    def fetchone(self, query: str, params: Sequence[Any]) -> Row: ...


class AsyncConnector(Protocol):
    """The async twin of :class:`Connector`."""

    @property
    def key(self) -> object: ...

    where: str
    hint: str

    async def fetchone(self, query: str, params: Sequence[Any]) -> Row: ...


class PsycopgConnector:
    """A psycopg connection (its transaction is the caller's)."""

    where = "this database"
    hint = "`sserelay migrate`"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @property
    def key(self) -> object:
        return self.conn

    def fetchone(self, query: str, params: Sequence[Any]) -> Row:
        return self.conn.execute(query, params).fetchone()


class AsyncPsycopgConnector:
    """A psycopg async connection (its transaction is the caller's)."""

    where = "this database"
    hint = "`sserelay migrate`"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @property
    def key(self) -> object:
        return self.conn

    async def fetchone(self, query: str, params: Sequence[Any]) -> Row:
        cursor = await self.conn.execute(query, params)
        return await cursor.fetchone()


# Whether a connection's database has the schema, asked once per connection object.
_installed: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def forget(key: object) -> None:
    """Forget whether ``key``'s database has the schema (it was just installed or removed)."""
    _installed.pop(key, None)


def decide(durable: bool | None, message: Message) -> bool | None:
    """``durable`` resolved as far as the message allows (None: ask the database)."""
    if durable and not message.durable_ok:
        raise InvalidEvent("a durable event gets its id from the log and cannot carry retry")
    return durable


def undecided(db: Connector | AsyncConnector, message: Message, installed: bool) -> bool:
    """What ``durable=None`` comes to once the database has said whether it has the log:
    durable if it has, and then an ``id``/``retry`` of the caller's is refused."""
    if installed:
        message.refuse_own_fields(f"the durable event log of {db.where}")
    return installed


def _statement(message: Message, durable: bool) -> tuple[str, Sequence[Any]]:
    if durable:
        return statements.PUBLISH, message.for_log()
    return statements.NOTIFY, (message.channel, message.envelope(MAX_PAYLOAD_BYTES, BUS))


def _result(row: Row, durable: bool) -> int | None:
    if not durable:
        return None
    assert row is not None  # a SELECT of one function call returns one row
    return int(row[0])


def installed(db: Connector) -> bool:
    """Whether ``db``'s database has the durable schema (asked once per connection)."""
    known = _installed.get(db.key)
    if known is None:
        row = db.fetchone(statements.AVAILABLE, (statements.PUBLISH_FUNCTION,))
        known = _installed[db.key] = bool(row and row[0])
    return known


def publish_on(db: Connector, message: Message, durable: bool | None = None) -> int | None:
    """Publish ``message`` through ``db``; its id in the log, or None if it went raw."""
    choice = decide(durable, message)
    what = f"publishing on {message.channel!r}"
    try:
        if choice is None:
            choice = undecided(db, message, installed(db))
        query, params = _statement(message, choice)
        return _result(db.fetchone(query, params), choice)
    except Exception as exc:
        forget(db.key)
        if sqlstate(exc) is None and not isinstance(exc, DRIVER_ERRORS):
            raise  # not the database's error (a framework wraps its own; see sqlstate)
        raise translate(exc, what, where=db.where, hint=db.hint) from exc


async def apublish_on(
    db: AsyncConnector, message: Message, durable: bool | None = None
) -> int | None:
    """The async twin of :func:`publish_on`."""
    choice = decide(durable, message)
    what = f"publishing on {message.channel!r}"
    try:
        if choice is None:
            known = _installed.get(db.key)
            if known is None:
                row = await db.fetchone(statements.AVAILABLE, (statements.PUBLISH_FUNCTION,))
                known = _installed[db.key] = bool(row and row[0])
            choice = undecided(db, message, known)
        query, params = _statement(message, choice)
        return _result(await db.fetchone(query, params), choice)
    except DRIVER_ERRORS as exc:
        forget(db.key)
        raise translate(exc, what, where=db.where, hint=db.hint) from exc


def publish(
    conn: str | psycopg.Connection[Any], message: Message, durable: bool | None = None
) -> int | None:
    """Publish on a psycopg connection, or on a DSN (a connection of its own, autocommit)."""
    if not isinstance(conn, str):
        return publish_on(PsycopgConnector(conn), message, durable)
    decide(durable, message)  # refuse before connecting what can never go out
    try:
        with psycopg.connect(conn, autocommit=True) as own:
            return publish_on(PsycopgConnector(own), message, durable)
    except psycopg.Error as exc:
        raise translate(exc, f"publishing on {message.channel!r}") from exc


async def apublish(
    conn: str | psycopg.AsyncConnection[Any], message: Message, durable: bool | None = None
) -> int | None:
    """The async twin of :func:`publish`."""
    if not isinstance(conn, str):
        return await apublish_on(AsyncPsycopgConnector(conn), message, durable)
    decide(durable, message)
    try:
        async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as own:
            return await apublish_on(AsyncPsycopgConnector(own), message, durable)
    except psycopg.Error as exc:
        raise translate(exc, f"publishing on {message.channel!r}") from exc


async def publish_pooled(pool: Any, message: Message, durable: bool | None = None) -> int | None:
    """Publish on a connection lent by the relay's pool (``POST /publish``)."""
    try:
        async with pool.connection(timeout=5) as conn:
            return await apublish_on(AsyncPsycopgConnector(conn), message, durable)
    except DRIVER_ERRORS as exc:
        raise translate(exc, f"publishing on {message.channel!r}") from exc


def durable_available(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``'s database has ``sserelay.publish`` (asked once per connection)."""
    known = _installed.get(conn)
    if known is None:
        row = conn.execute(statements.AVAILABLE, (statements.PUBLISH_FUNCTION,)).fetchone()
        known = _installed[conn] = bool(row and row[0])
    return known
