"""Who is on a presence channel, read through Django's own database connection (or the
Redis of ``SSERELAY["REDIS_URL"]`` when that is the bus): the same answer as
``GET /presence/{channel}`` and :func:`sserelay.presence` (docs/presence.md)."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, connections

from ...bus.postgres import statements
from ...bus.postgres.errors import translate
from ...bus.presence import presence as bus_presence
from ...core.presence import view_from_rows
from ...wire.channels import validate_channel
from . import conf

__all__ = ["presence"]


def presence(channel: str, *, using: str | None = None) -> dict[str, Any]:
    """``{"channel", "subjects", "anonymous", "connections"}`` of ``channel`` across all
    relays, read on ``DATABASES[using]`` (default: ``SSERELAY["DATABASE"]``)."""
    validate_channel(channel)
    settings = conf.relay_settings()
    if settings.bus == "redis" and settings.redis_url is not None:
        return bus_presence(channel, redis=settings.redis_url, prefix=settings.redis_prefix)
    alias = using or conf.database_alias()
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(statements.PRESENCE_READ, [channel])
            rows = cursor.fetchall()
    except DatabaseError as exc:
        raise translate(
            exc,
            "reading presence",
            reading=True,
            where=f"database {alias!r}",
            hint="`manage.py migrate sserelay`",
        ) from exc
    return view_from_rows(channel, ((s, int(n)) for s, n in rows)).as_dict()
