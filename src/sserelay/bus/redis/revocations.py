"""Revocations on Redis (one Redis or a Redis Cluster): a sorted set of the revocations in
force, ``<prefix>sserelay:revocations`` (member ``kind:value``, score the revocation's
time), and a control message on ``<prefix>sserelay.revoked``, both written by one script
(:data:`REVOKE_LUA`) on the server's clock; and each relay's feed of them
(:class:`RedisRevocations`).

The script also drops the members older than the revocation TTL and sets the key to
expire that long after the newest. On a cluster the set is one key (on one master) and the
control message a classic ``PUBLISH``, which a cluster sends to every node; each relay's
feed subscribes on the node its URL names.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis
import redis.asyncio

from ...access.revocations import Revocation, check_revocation
from ...errors import BrokerUnavailable, ConfigError, PublishError
from ..control import CONTROL_CHANNEL, OnChange, RevocationFeed
from ..listener import ProbeFailed
from .cluster.layout import CLUSTER_ERRORS, acluster_client, adetect, cluster_client, detect
from .publish import RedisBus

KEY = "sserelay:revocations"

#: KEYS[1] the set; ARGV: kind, value, seconds kept, control channel. Returns the time.
REVOKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local keep = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.6f', now - keep))
redis.call('EXPIRE', KEYS[1], math.ceil(keep))
local at = string.format('%.6f', now)
redis.call('PUBLISH', ARGV[4], cjson.encode({kind = ARGV[1], value = ARGV[2], at = at}))
return at
"""


def _args(prefix: str, kind: str, value: str, keep: float) -> tuple[str, list[Any]]:
    return prefix + KEY, [kind, value, keep, prefix + CONTROL_CHANNEL]


def revoke_with(bus: RedisBus, kind: str, value: str, keep: float) -> float:
    """Revoke on the Redis (or cluster) of ``bus``; the revocation's time."""
    key, args = _args(bus.prefix, kind, value, keep)
    single = redis.Redis.from_url(bus.url, socket_timeout=10)
    client: redis.Redis | redis.RedisCluster = single
    try:
        if detect(single).clustered:
            single.close()
            client = cluster_client(bus.url, socket_timeout=10)
        at = client.eval(REVOKE_LUA, 1, key, *args)
    except CLUSTER_ERRORS as exc:
        raise PublishError(f"revoking failed: {exc}") from exc
    finally:
        client.close()
    return float(at)


def _not_cancelled() -> None:
    """Raise the cancellation redis-py swallowed: a cancel landing while redis-py 8 opens
    a connection is lost inside it (its timeout context), and the task would then wait
    on its next read for ever, holding up the relay's shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _parse(member: bytes, score: float) -> Revocation | None:
    kind, _, value = member.decode(errors="replace").partition(":")
    try:
        return Revocation(*check_revocation(kind, value), float(score))
    except ConfigError:
        return None


class RedisRevocations(RevocationFeed):
    """A relay's feed of revocations from Redis (see the module docstring)."""

    errors = (*CLUSTER_ERRORS, TimeoutError, ProbeFailed, BrokerUnavailable)

    def __init__(self, url: str, on_change: OnChange, *, prefix: str = "", **options: Any) -> None:
        super().__init__(on_change, **options)
        self.url = url
        self.prefix = prefix
        self._data: redis.asyncio.Redis | redis.asyncio.RedisCluster | None = None

    async def _clients(self) -> tuple[redis.asyncio.Redis, Any]:
        single = redis.asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_keepalive=True,
            client_name="sserelay-revocations",
        )
        data: Any = single
        try:
            clustered = (await adetect(single)).clustered
            _not_cancelled()
        except BaseException:
            await single.aclose()
            raise
        if clustered:
            data = acluster_client(self.url, socket_timeout=self.timeout)
        return single, data

    async def _session(self) -> None:
        single, data = await self._clients()
        pubsub = single.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.prefix + CONTROL_CHANNEL)
            _not_cancelled()
            found = await self._load(data)
            _not_cancelled()
            self._loaded(found)
            # Until a reload is due; then the next session subscribes and reads afresh (a
            # read cut short leaves redis-py's connection to reconnect on its own, and
            # messages sent meanwhile would be lost: so never reuse it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_reload()):
                    await self._listen(pubsub)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if data is not single:
                await data.aclose()
            await single.aclose()

    async def _listen(self, pubsub: Any) -> None:
        """Hand over control messages (a blocking read: get_message's own timeout can
        swallow a cancellation)."""
        async for message in pubsub.listen():
            _not_cancelled()
            if message.get("type") == "message":
                data = message["data"]
                self._notified(data.decode(errors="replace") if isinstance(data, bytes) else data)

    async def _load(self, data: Any) -> list[Revocation]:
        key = self.prefix + KEY
        # This relay's clock: a second of skew keeps a revocation a second more or less.
        since = time.time() - self.ttl
        members = await data.zrangebyscore(key, since, "+inf", withscores=True)
        found = [_parse(member, score) for member, score in members]
        return [r for r in found if r is not None]

    async def revoke(self, kind: str, value: str) -> float:
        key, args = _args(self.prefix, kind, value, self.ttl)
        single, data = await self._clients()
        try:
            at = await data.eval(REVOKE_LUA, 1, key, *args)
        except CLUSTER_ERRORS as exc:
            raise BrokerUnavailable(f"revoking failed: {exc}") from exc
        finally:
            if data is not single:
                await data.aclose()
            await single.aclose()
        return float(at)
