"""Publishing through Django's own database connection.

The event is sent with the connection Django uses for the ORM, so it is part of the
current transaction: inside ``transaction.atomic()`` it goes out when the transaction
commits and not at all if it rolls back (PostgreSQL's NOTIFY works that way, and a
durable event's log row commits or rolls back with it). In autocommit mode (Django's
default outside ``atomic``) it goes out at once.

It runs the bus's own publish (:func:`sserelay.bus.postgres.publish.publish_on`: the
raw-or-durable decision, the statements, the errors) on a :class:`DjangoConnector`,
which runs a statement on Django's connection, as procrastinate's Django connector does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, connections

from ...access.revocations import one_of
from ...bus.control import DEFAULT_TTL
from ...bus.postgres import publish as postgres
from ...bus.postgres import statements
from ...bus.postgres.errors import translate
from ...bus.postgres.revocations import revoke_statement
from ...errors import PublishError
from ...wire.message import Message
from . import conf

__all__ = ["DjangoConnector", "last_event_id", "publish", "revoke"]


class DjangoConnector:
    """A :class:`~sserelay.bus.postgres.publish.Connector` on ``DATABASES[alias]``."""

    hint = "`manage.py migrate sserelay`"

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.where = f"database {alias!r}"
        connection = connections[alias]
        connection.ensure_connection()
        #: The driver's connection: what the schema answer is remembered on.
        self.key = connection.connection

    def fetchone(self, query: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        # Django wraps the driver's errors in its own; the bus reads their SQLSTATE.
        with connections[self.alias].cursor() as cursor:
            cursor.execute(query, list(params))
            row = cursor.fetchone()
        return tuple(row) if row is not None else None


def publish(
    channel: str,
    data: Any,
    *,
    event: str | None = None,
    using: str | None = None,
    durable: bool | None = None,
) -> int | None:
    """Publish ``data`` on ``channel`` in the current transaction of ``using``.

    ``data``: a ``str`` is sent as is, anything else as compact JSON (use
    :class:`~django.core.serializers.json.DjangoJSONEncoder` first for dates and
    decimals). ``durable`` defaults to ``SSERELAY["DURABLE"]``: None = durable when the
    schema is installed (the ``sserelay`` migration), True = must be, False = a plain
    NOTIFY. Returns the event's id in the log, or None for a plain NOTIFY.
    """
    message = Message.build(channel, data, event=event)
    if durable is None:
        durable = conf.get("DURABLE")
    db = DjangoConnector(using or conf.database_alias())
    try:
        return postgres.publish_on(db, message, durable)
    except DatabaseError as exc:
        raise translate(exc, f"publishing on {channel!r}", where=db.where, hint=db.hint) from exc


def last_event_id(channel: str, *, using: str | None = None) -> int | None:
    """The id of the newest event published on the durable ``channel`` (None: none yet,
    or no schema). Render it into a page so that its stream resumes right after what
    the page shows: ``?lastEventId=<id>`` (see ``docs/django.md``)."""
    db = DjangoConnector(using or conf.database_alias())
    try:
        if not postgres.installed(db):
            return None
        row = db.fetchone(statements.LAST_ID, [channel])
    except DatabaseError as exc:
        raise PublishError(f"reading the last id of {channel!r} failed: {exc}") from exc
    return int(row[0]) if row is not None else 0


def forget(raw_connection: Any) -> None:
    """Forget whether ``raw_connection``'s database has the schema (it just changed)."""
    postgres.forget(raw_connection)


def revoke(
    *,
    subject: str | None = None,
    jti: str | None = None,
    channel: str | None = None,
    using: str | None = None,
    ttl: float = DEFAULT_TTL,
) -> float:
    """Revoke the tokens of ``subject``, the token ``jti`` or the channels matching the
    pattern ``channel`` (exactly one) on every relay, in the current transaction of
    ``using`` (the relays hear of it when it commits; docs/revocation.md). Returns the
    revocation's time (seconds since the epoch); ``ttl``: seconds it is kept."""
    kind, value = one_of(subject, jti, channel)
    db = DjangoConnector(using or conf.database_alias())
    try:
        row = db.fetchone(revoke_statement(kind), [value, ttl])
    except DatabaseError as exc:
        raise translate(exc, "revoking", where=db.where, hint=db.hint) from exc
    assert row is not None
    return float(row[0])
