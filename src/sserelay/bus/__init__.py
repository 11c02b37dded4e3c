"""The buses: PostgreSQL (``bus/postgres``) and Redis (``bus/redis``, with Redis Cluster in
``bus/redis/cluster``), each a listener, an event log, a publish path and (PostgreSQL) a
schema, under the same file names.

:func:`connect` builds the :class:`~sserelay.core.protocols.Bus` a relay's settings ask for.
"""

from __future__ import annotations

import os
import socket

from .. import jitter
from ..access.patterns import matches_any
from ..config import Settings
from ..core.presence import PresenceService, PresenceStore, PresenceTracker
from ..core.protocols import Bus, BusSink
from ..errors import ConfigError
from ..wire.message import Message
from .control import OnChange, RevocationFeed


def connect(settings: Settings, dsn: str | None, sink: BusSink) -> Bus:
    """The bus of ``settings`` (nothing is connected yet: the listener's task does that),
    its listener handing messages to ``sink``."""
    if settings.bus == "redis":
        return _redis(settings, sink)
    if dsn is None:
        raise ConfigError("the PostgreSQL bus needs a DSN")
    from .postgres.listener import PostgresListener
    from .postgres.log import PostgresLog
    from .postgres.publish import MAX_PAYLOAD_BYTES, publish_pooled

    listener = PostgresListener(
        settings.listen_dsn or dsn,
        sink,
        probe_interval=settings.probe_interval,
        probe_timeout=settings.probe_timeout,
        reconnect_min=settings.reconnect_min,
        reconnect_max=settings.reconnect_max,
    )
    # Durable channels: a small pool reads the log (catch-up, gap fills, large events)
    # and publishes (POST /publish).
    log = PostgresLog(dsn)

    async def publish(message: Message, durable: bool | None = None) -> int | str | None:
        return await publish_pooled(log.pool, message, durable)

    return Bus("postgres", listener, log, publish, MAX_PAYLOAD_BYTES)


def revocation_feed(settings: Settings, dsn: str | None, on_change: OnChange) -> RevocationFeed:
    """The relay's feed of revocations on the bus of ``settings`` (docs/revocation.md),
    handing them to ``on_change``; nothing is connected until its ``run()``."""
    options = {
        "ttl": settings.revocation_ttl,
        "reconnect_min": settings.reconnect_min,
        "reconnect_max": settings.reconnect_max,
    }
    if settings.bus == "redis":
        from .redis.revocations import RedisRevocations

        assert settings.redis_url is not None  # checked by Settings
        return RedisRevocations(
            settings.redis_url, on_change, prefix=settings.redis_prefix, **options
        )
    from .postgres.revocations import PostgresRevocations

    if dsn is None:
        raise ConfigError("the PostgreSQL bus needs a DSN")
    # A direct session, as the listener's: LISTEN passes no PgBouncer in transaction mode.
    return PostgresRevocations(settings.listen_dsn or dsn, on_change, **options)


def _redis(settings: Settings, sink: BusSink) -> Bus:
    """Redis: pub/sub for the live events, one stream per durable channel; one Redis or a
    Redis Cluster, whichever the URL reaches (the listener and the log ask it)."""
    try:
        from .redis.cluster.listener import ClusterListener
        from .redis.cluster.log import ClusterLog
        from .redis.scripts import MAX_RAW_PAYLOAD_BYTES
    except ImportError as exc:
        raise ConfigError(
            f"the Redis bus needs the redis package: pip install 'sserelay[redis]' ({exc})"
        ) from None
    assert settings.redis_url is not None  # checked by Settings
    listener = ClusterListener(
        settings.redis_url,
        sink,
        prefix=settings.redis_prefix,
        probe_interval=settings.probe_interval,
        probe_timeout=settings.probe_timeout,
        reconnect_min=settings.reconnect_min,
        reconnect_max=settings.reconnect_max,
    )
    log = ClusterLog(
        settings.redis_url,
        prefix=settings.redis_prefix,
        retention_count=settings.retention_count,
        retention_age=settings.retention_age,
    )

    async def publish(message: Message, durable: bool | None = None) -> int | str | None:
        return await log.publish(message, durable)

    return Bus("redis", listener, log, publish, MAX_RAW_PAYLOAD_BYTES)


def presence_store(bus: Bus, relay: str, lease: float) -> PresenceStore:
    """Where the relay ``relay`` keeps its presence rows on ``bus`` (docs/presence.md)."""
    if bus.kind == "redis":
        from .redis.presence import RedisPresence

        return RedisPresence(bus.log, relay, lease)
    from .postgres.presence import PostgresPresence

    return PostgresPresence(bus.log.pool, relay, lease)  # type: ignore[attr-defined]  # PostgresLog


def presence_service(settings: Settings, bus: Bus) -> PresenceService:
    """A relay's presence (``settings.presence``): its tracker, its rows on ``bus`` under a
    relay id of its own, and the join/leave events published on ``bus``."""
    patterns = settings.presence
    tracker = PresenceTracker(
        lambda channel: matches_any(patterns, channel), linger=settings.presence_linger
    )
    relay_id = f"{socket.gethostname()}:{os.getpid()}:{jitter.randint(0, 2**32):08x}"

    async def publish(channel: str, event: str, data: object) -> None:
        await bus.publish(Message.build(channel, data, event=event), False)

    return PresenceService(
        tracker,
        presence_store(bus, relay_id, settings.presence_lease),
        publish,
        interval=settings.presence_interval,
        lease=settings.presence_lease,
        events=settings.presence_events,
        max_events=settings.presence_max_events,
    )
