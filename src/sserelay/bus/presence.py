"""Who is on a presence channel, read from the bus: :func:`presence` and
:func:`apresence` (docs/presence.md). The same answer as ``GET /presence/{channel}``,
from PostgreSQL (``dsn``: a DSN or a psycopg connection) or Redis (``redis``: a URL of
one Redis or of any node of a Redis Cluster, with the relays' ``prefix``)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from ..errors import ConfigError
from .postgres import presence as postgres

__all__ = ["apresence", "presence"]


def _which(dsn: object, redis: object) -> None:
    if (dsn is None) == (redis is None):
        raise ConfigError("presence() reads one bus: give dsn=... or redis=..., not both")


def _redis_read(url: str, channel: str, prefix: str) -> dict[str, Any]:
    try:
        from .redis.presence import read_presence
    except ImportError as exc:
        raise ConfigError(
            f"reading Redis needs the redis package: pip install 'sserelay[redis]' ({exc})"
        ) from None
    return read_presence(url, channel, prefix=prefix).as_dict()


def presence(
    channel: str,
    *,
    dsn: str | psycopg.Connection[Any] | None = None,
    redis: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """``{"channel", "subjects", "anonymous", "connections"}`` of ``channel`` across all
    relays (``"truncated": true`` too past 10,000 subjects, which are listed sorted).

    Raises InvalidChannel for a bad name, BrokerUnavailable if the bus cannot be read,
    SchemaMissing if PostgreSQL lacks the presence table (``sserelay migrate``). A
    channel nobody is on (or not opted in) reads as empty.
    """
    _which(dsn, redis)
    if redis is not None:
        return _redis_read(redis, channel, prefix)
    assert dsn is not None
    return postgres.read_presence(dsn, channel).as_dict()


async def apresence(
    channel: str,
    *,
    dsn: str | psycopg.AsyncConnection[Any] | None = None,
    redis: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """The async twin of :func:`presence` (``dsn``: a DSN or a psycopg
    ``AsyncConnection``; Redis is read in a thread)."""
    _which(dsn, redis)
    if redis is not None:
        return await asyncio.to_thread(_redis_read, redis, channel, prefix)
    assert dsn is not None
    return (await postgres.aread_presence(dsn, channel)).as_dict()
