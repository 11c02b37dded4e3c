""":func:`revoke`, the Python helper: a revocation on whichever bus it is given
(docs/revocation.md), as :func:`sserelay.publish` publishes on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ..access.revocations import one_of
from ..errors import ConfigError
from .control import DEFAULT_TTL
from .publish import as_redis_bus

if TYPE_CHECKING:
    import psycopg

    from .redis.publish import RedisBus

__all__ = ["revoke"]


def revoke(
    conn: str | psycopg.Connection[Any] | RedisBus,
    *,
    subject: str | None = None,
    jti: str | None = None,
    channel: str | None = None,
    ttl: float = DEFAULT_TTL,
) -> float:
    """Revoke the tokens of ``subject``, the token ``jti``, or the streams on the channels
    matching the pattern ``channel`` (exactly one), issued before now, on every relay of
    the bus ``conn`` (a PostgreSQL DSN or psycopg connection; a Redis URL or
    :class:`~sserelay.bus.redis.publish.RedisBus`). Returns the revocation's time (seconds
    since the epoch, the bus's clock).

    Every relay ends the streams it covers within about a second, and refuses the tokens
    it names issued before that time, for ``ttl`` seconds (the revocation is then
    pruned: make it at least your longest token lifetime). On a psycopg connection in a
    transaction the relays hear of it at commit.
    """
    kind, value = one_of(subject, jti, channel)
    if not 0 < ttl < float("inf"):
        raise ConfigError(f"ttl must be a positive number of seconds, not {ttl}")
    bus = as_redis_bus(conn)
    if bus is None:
        from .postgres.revocations import revoke_on

        return revoke_on(cast("str | psycopg.Connection[Any]", conn), kind, value, ttl)
    from .redis.revocations import revoke_with

    return revoke_with(bus, kind, value, ttl)
