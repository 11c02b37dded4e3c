"""Presence on Redis (one Redis or a Redis Cluster): per channel, a sorted set of the
relays with rows on it (score: the lease's end, in ms of the Redis clock) and a hash per
relay (subject -> connections; ``""`` counts anonymous streams) that expires with the
lease. See docs/presence.md.

Names: ``<prefix>sserelay:presence:<channel>`` (the index) and
``<prefix>sserelay:presence:<channel>|<relay>`` (a relay's hash); on a cluster the
channel is a hash tag (``sserelay:presence:{<channel>}``, as the log's names), so one
script sees every relay's hash of a channel on one node.

A relay's flush runs :data:`WRITE_LUA` once per changed channel (and once per lease
third on the others, to renew them): atomic per channel, so the join/leave answers of
two relays' flushes never interleave. A relay whose lease has passed is dropped from the
index by the next write on the channel (any relay's, and each renews every lease third),
which answers the leaves of its subjects; its hash expires by itself anyway (at twice the
lease, so that this write still finds who was on it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis

from ...core.presence import JOIN, LEAVE, Batch, Change, PresenceView, Transition, view_from_rows
from ...errors import BrokerUnavailable
from ...wire.channels import validate_channel
from .cluster.layout import CLUSTER_ERRORS, Layout, cluster_client, detect

PRESENCE_KEY = "sserelay:presence:"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: index, this relay's hash. ARGV: relay, lease ms, events ('1'/'0'), then
#: (subject, connections) pairs, connections -1 removing the subject. Returns
#: {kind, subject, ...} of the non-anonymous subjects that joined ('J') or left ('L').
WRITE_LUA = (
    _NOW
    + """
local index, mine = KEYS[1], KEYS[2]
local relay, lease, events = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
-- Relays whose lease has passed: their subjects may have left with them.
local dead = {}
for _, r in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now)) do
  if r ~= relay then
    local k = index .. '|' .. r
    if events then
      for _, s in ipairs(redis.call('HKEYS', k)) do
        if s ~= '' then dead[#dead + 1] = s end
      end
    end
    redis.call('DEL', k)
  end
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
local others = {}
local live = false
if events then
  live = redis.call('ZSCORE', index, relay) ~= false
  for _, r in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if r ~= relay then others[#others + 1] = index .. '|' .. r end
  end
end
local out = {}
for i = 4, #ARGV, 2 do
  local s, n = ARGV[i], tonumber(ARGV[i + 1])
  local watch = events and s ~= ''
  local had, elsewhere = false, false
  if watch then
    had = live and redis.call('HEXISTS', mine, s) == 1
    for _, k in ipairs(others) do
      if redis.call('HEXISTS', k, s) == 1 then elsewhere = true break end
    end
  end
  if n < 0 then redis.call('HDEL', mine, s) else redis.call('HSET', mine, s, n) end
  if watch and not elsewhere then
    if n < 0 and had then out[#out + 1] = 'L'; out[#out + 1] = s
    elseif n >= 0 and not had then out[#out + 1] = 'J'; out[#out + 1] = s end
  end
end
local said = {}
for _, s in ipairs(dead) do
  if not said[s] and redis.call('HEXISTS', mine, s) == 0 then
    said[s] = true
    local elsewhere = false
    for _, k in ipairs(others) do
      if redis.call('HEXISTS', k, s) == 1 then elsewhere = true break end
    end
    if not elsewhere then out[#out + 1] = 'L'; out[#out + 1] = s end
  end
end
if redis.call('HLEN', mine) > 0 then
  -- The hash outlives the lease (readers go by the index's scores), so that the next
  -- writer still finds who was on a relay that died.
  redis.call('PEXPIRE', mine, 2 * lease)
  redis.call('ZADD', index, now + lease, relay)
  if redis.call('PTTL', index) < 2 * lease then redis.call('PEXPIRE', index, 2 * lease) end
else
  redis.call('ZREM', index, relay)
end
return out
"""
)

#: KEYS: index. Returns {subject, connections, ...} of every live relay's hash.
READ_LUA = (
    _NOW
    + """
local out = {}
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local h = redis.call('HGETALL', KEYS[1] .. '|' .. r)
  for i = 1, #h do out[#out + 1] = h[i] end
end
return out
"""
)

#: KEYS: index, this relay's hash. ARGV: relay.
REMOVE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 0
"""


def index_key(layout: Layout, prefix: str, channel: str) -> str:
    return layout._name(prefix, PRESENCE_KEY, channel)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _view(channel: str, flat: list[Any]) -> PresenceView:
    pairs = ((_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2))
    return view_from_rows(channel, pairs)


class RedisPresence:
    """A relay's presence hashes, on its log's client (a
    :class:`~sserelay.core.presence.PresenceStore`). ``log`` is the relay's
    :class:`~sserelay.bus.redis.cluster.log.ClusterLog` (it knows one Redis from a
    cluster)."""

    def __init__(self, log: Any, relay: str, lease: float) -> None:
        self.log = log
        self.prefix: str = log.prefix
        self.relay = relay
        self.lease_ms = max(1, round(lease * 1000))
        self._renewed: dict[str, float] = {}
        self._scripts: dict[str, Any] = {}
        self._client: Any = None

    async def _script(self, source: str) -> tuple[Layout, Any]:
        layout = await self.log.layout_known()
        if self._client is not self.log.client:  # made, or switched to the cluster's
            self._client = self.log.client
            self._scripts.clear()
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return layout, script

    async def write(self, batch: Batch, *, events: bool) -> list[Transition]:
        layout, script = await self._script(WRITE_LUA)
        by_channel: dict[str, list[Change]] = {}
        for change in batch.changes:
            by_channel.setdefault(change.channel, []).append(change)
        now = time.monotonic()
        due = [c for c in batch.channels if now - self._renewed.get(c, 0.0) >= self._every]
        out: list[Transition] = []
        for channel in dict.fromkeys([*by_channel, *due]):
            index = index_key(layout, self.prefix, channel)
            args: list[Any] = [self.relay, self.lease_ms, "1" if events else "0"]
            for change in by_channel.get(channel, ()):
                count = -1 if change.connections is None else change.connections
                args += [change.subject, count]
            keys = [index, f"{index}|{self.relay}"]
            flat = await self.log.call("writing presence", script(keys=keys, args=args))
            self._renewed[channel] = now
            for i in range(0, len(flat) - 1, 2):
                kind = JOIN if _text(flat[i]) == "J" else LEAVE
                out.append(Transition(channel, kind, _text(flat[i + 1])))
        for channel in list(self._renewed):
            if channel not in batch.channels:
                del self._renewed[channel]
        return out

    @property
    def _every(self) -> float:
        return self.lease_ms / 3000

    async def read(self, channel: str) -> PresenceView:
        layout, script = await self._script(READ_LUA)
        keys = [index_key(layout, self.prefix, channel)]
        return _view(channel, await self.log.call("reading presence", script(keys=keys)))

    async def prune(self, *, events: bool) -> list[Transition]:
        """Nothing to do: the writes drop expired relays (answering their subjects'
        leaves), and hashes expire by themselves."""
        return []

    async def remove(self, channels: Iterable[str] = ()) -> None:
        layout, script = await self._script(REMOVE_LUA)
        for channel in channels:
            index = index_key(layout, self.prefix, channel)
            keys = [index, f"{index}|{self.relay}"]
            await self.log.call("removing presence", script(keys=keys, args=[self.relay]))


def read_presence(url: str, channel: str, *, prefix: str = "") -> PresenceView:
    """Who is on ``channel``, read from the Redis (or Redis Cluster) at ``url``."""
    validate_channel(channel)
    try:
        client: Any = redis.Redis.from_url(url, socket_timeout=10)
        with client:
            layout = detect(client)
            if layout.clustered:
                client = cluster_client(url, socket_timeout=10)
            try:
                keys = [index_key(layout, prefix, channel)]
                flat = client.register_script(READ_LUA)(keys=keys)
            finally:
                if layout.clustered:
                    client.close()
    except CLUSTER_ERRORS as exc:
        raise BrokerUnavailable(f"reading presence failed: {exc}") from exc
    return _view(channel, flat)
