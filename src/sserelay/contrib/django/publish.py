"""Publishing through Django's own database connection.

The event is sent with the connection Django uses for the ORM, so it is part of
the current transaction: inside ``transaction.atomic()`` it goes out when the
transaction commits and not at all if it rolls back (PostgreSQL's NOTIFY works that
way, and a durable event's log row commits or rolls back with it). In autocommit
mode (Django's default outside ``atomic``) it goes out at once.
"""

from __future__ import annotations

import weakref
from typing import Any

from django.db import DatabaseError, connections

from ...bus.postgres.durable import AVAILABLE_SQL, LAST_ID_SQL, PUBLISH_SQL, prepare
from ...bus.postgres.schema import PUBLISH_FUNCTION
from ...bus.publish import NOTIFY_SQL, encode_payload
from ...errors import PublishError, SchemaMissing
from ...wire.channels import validate_channel
from . import conf

__all__ = ["last_event_id", "publish"]

# Whether a (raw) connection's database has the durable schema: asked once per
# connection object, like sserelay.publish does.
_available: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

_MISSING_CODES = frozenset({"3F000", "42P01", "42883"})  # no schema, table, function


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
    alias = using or conf.database_alias()
    if durable is None:
        durable = conf.get("DURABLE")
    if durable is False:
        validate_channel(channel)
        payload = encode_payload(data, event=event)
        _execute(alias, channel, NOTIFY_SQL, [channel, payload])
        return None
    params = list(prepare(channel, data, event))
    if durable is None and not _durable_available(alias, channel):
        _execute(alias, channel, NOTIFY_SQL, [channel, encode_payload(data, event=event)])
        return None
    row = _execute(alias, channel, PUBLISH_SQL, params)
    return int(row[0]) if row is not None else None


def last_event_id(channel: str, *, using: str | None = None) -> int | None:
    """The id of the newest event published on the durable ``channel`` (None: none yet,
    or no schema). Render it into a page so that its stream resumes right after what
    the page shows: ``?lastEventId=<id>`` (see ``docs/django.md``)."""
    alias = using or conf.database_alias()
    try:
        if not _durable_available(alias, channel):
            return None
        with connections[alias].cursor() as cursor:
            cursor.execute(LAST_ID_SQL, [channel])
            row = cursor.fetchone()
    except DatabaseError as exc:
        raise PublishError(f"reading the last id of {channel!r} failed: {exc}") from exc
    return int(row[0]) if row is not None else 0


def _durable_available(alias: str, channel: str) -> bool:
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    known = _available.get(raw)
    if known is None:
        with connection.cursor() as cursor:
            cursor.execute(AVAILABLE_SQL, [PUBLISH_FUNCTION])
            row = cursor.fetchone()
        known = _available[raw] = bool(row and row[0])
    return known


def _execute(alias: str, channel: str, query: str, params: list[Any]) -> Any:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchone()
    except DatabaseError as exc:
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) in _MISSING_CODES and query == PUBLISH_SQL:
            raise SchemaMissing(
                f"the sserelay schema is not installed in database {alias!r}: "
                "run `manage.py migrate sserelay`"
            ) from exc
        raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc


def forget(raw_connection: Any) -> None:
    """Forget whether ``raw_connection``'s database has the schema (it just changed)."""
    _available.pop(raw_connection, None)
