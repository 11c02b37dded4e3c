"""What differs between one Redis and a Redis Cluster, and how to tell which a URL reaches.

On one Redis the names are those of :mod:`sserelay.bus.redis.scripts`, unchanged: the
stream ``<prefix>sserelay:log:<channel>``, plain publishes on ``<prefix><channel>``,
durable ones on ``<prefix>sserelay.d.<channel>``, classic ``PUBLISH``.

On a cluster, the keys one script touches must hash to one slot, and a sharded
``SPUBLISH`` inside a script must go to a channel of that slot too. So a channel's stream
and its durable pub/sub name carry a hash tag, the channel itself:
``<prefix>sserelay:log:{<channel>}`` and ``<prefix>sserelay.d.{<channel>}`` (a channel
name containing ``}`` would end the tag early, so its tag is the MD5 of the name in hex,
followed by the name: ``sserelay:log:{<md5>}<channel>``). Plain publishes keep the name
``<prefix><channel>`` (``SPUBLISH lobby hi`` from ``redis-cli -c``); with no prefix it
hashes to the same slot as ``{lobby}``. Every publish is sharded (``SPUBLISH``): classic
``PUBLISH`` on a cluster is broadcast to every node, and the relay does not listen to it.

A prefix on a cluster may not contain ``{`` or ``}`` (it comes before the tag and would
move it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff

from ....errors import ConfigError
from ..scripts import DURABLE_PREFIX, LOG_KEY, PUBLISH_LUA

#: The publish script on a cluster: the same, notifying with ``SPUBLISH``.
CLUSTER_PUBLISH_LUA = PUBLISH_LUA.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
assert CLUSTER_PUBLISH_LUA != PUBLISH_LUA

#: What a cluster client raises besides ``RedisError`` (its own, not a ``RedisError``).
CLUSTER_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
)


def hash_tag(channel: str) -> tuple[str, str]:
    """(the tag between the braces, what follows them) for ``channel``'s cluster names."""
    if "}" not in channel:
        return channel, ""
    return hashlib.md5(channel.encode(), usedforsecurity=False).hexdigest(), channel


@dataclass(frozen=True)
class Layout:
    """Names and commands of one deployment kind (:data:`SINGLE` or :data:`CLUSTER`)."""

    clustered: bool
    #: The atomic durable publish script.
    publish_lua: str

    def stream_key(self, prefix: str, channel: str) -> str:
        return self._name(prefix, LOG_KEY, channel)

    def durable_channel(self, prefix: str, channel: str) -> str:
        return self._name(prefix, DURABLE_PREFIX, channel)

    def raw_channel(self, prefix: str, channel: str) -> str:
        return prefix + channel

    def _name(self, prefix: str, kind: str, channel: str) -> str:
        if not self.clustered:
            return f"{prefix}{kind}{channel}"
        tag, rest = hash_tag(channel)
        return f"{prefix}{kind}{{{tag}}}{rest}"

    def check_prefix(self, prefix: str) -> None:
        if self.clustered and ("{" in prefix or "}" in prefix):
            raise ConfigError(
                f"on a Redis Cluster the Redis prefix may not contain {{ or }}: {prefix!r} "
                "would move the hash tag that keeps a channel's keys on one node"
            )


SINGLE = Layout(False, PUBLISH_LUA)
CLUSTER = Layout(True, CLUSTER_PUBLISH_LUA)


def layout_from_info(info: Any) -> Layout:
    """The layout ``INFO cluster`` describes (a parsed dict, or the raw text)."""
    if isinstance(info, bytes | str):
        text = info.decode() if isinstance(info, bytes) else info
        return CLUSTER if "cluster_enabled:1" in text.split() else SINGLE
    return CLUSTER if str(info.get("cluster_enabled", 0)) == "1" else SINGLE


def detect(client: redis.Redis) -> Layout:
    """Whether ``client``'s server is a cluster node (``INFO cluster``); a server that will
    not say (an ACL without ``INFO``) is taken for one Redis."""
    try:
        return layout_from_info(client.info("cluster"))
    except redis_errors.ResponseError:
        return SINGLE


async def read_layout(conn: AbstractConnection) -> Layout:
    """What the server of a bare (connected) connection says it is."""
    await conn.send_command("INFO", "cluster", check_health=False)
    try:
        return layout_from_info(await conn.read_response())
    except redis_errors.ResponseError:
        return SINGLE


async def adetect(client: redis.asyncio.Redis) -> Layout:
    """The async twin of :func:`detect`."""
    try:
        return layout_from_info(await client.info("cluster"))
    except redis_errors.ResponseError:
        return SINGLE


# Cluster clients never retry a command by themselves: a durable publish whose reply was
# lost may have run, and must not silently run twice (the caller decides, see
# docs/redis.md). Redirections (MOVED, ASK) are followed all the same, and after a
# connection error the next command finds the cluster's nodes again.


def cluster_client(url: str, **options: Any) -> redis.RedisCluster:
    """A synchronous cluster client for ``url`` (any node of the cluster)."""
    return redis.RedisCluster.from_url(url, retry=redis.retry.Retry(NoBackoff(), 0), **options)


def acluster_client(url: str, **options: Any) -> redis.asyncio.RedisCluster:
    """An async cluster client for ``url`` (any node of the cluster)."""
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    return redis.asyncio.RedisCluster.from_url(url, retry=retry, **options)
