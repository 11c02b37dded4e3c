"""The buses: PostgreSQL (``bus/postgres``) and Redis (``bus/redis``, with Redis Cluster in
``bus/redis/cluster``), each a listener, an event log, a publish path and (PostgreSQL) a
schema, under the same file names.

:func:`connect` builds the :class:`~sserelay.core.protocols.Bus` a relay's settings ask for.
"""

from __future__ import annotations

from ..config import Settings
from ..core.presence import PresenceStore
from ..core.protocols import Bus, BusSink
from ..errors import ConfigError
from ..wire.message import Message


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
