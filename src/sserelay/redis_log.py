"""Durable channels and publishing on Redis: one stream per channel.

A durable publish runs one Lua script, atomically on the Redis server: it reads the id
of the channel stream's last entry (``prev``), ``XADD``-s the event (automatic id
``ms-seq``, so ids grow in the order Redis ran the publishes), trims the stream to
the configured retention (``MAXLEN ~ N`` and/or ``MINID ~ now - age``), and
``PUBLISH``-es ``{"seq": "<id>", "prev": "<prev id>", "data": ..., "event": ...}``
on the channel. Every entry also stores its ``prev``. A relay whose position on the
channel is ``prev`` delivers the event at once; any other ``prev`` is a gap (the
relay's connection was down, or the relay just started), filled with ``XRANGE`` from
its position. Because the stream and the notification change in one atomic step, an
event is in the stream iff it was notified, as with PostgreSQL's ``sserelay.publish``.

The SSE ``id:`` of a durable event is its stream entry id (``1718000000000-0``). The
relay's replay logic (:mod:`sserelay.replay`) works on integers: ``ms << 64 | seq``
maps an entry id to one, losslessly, in the same order.

Keys: the stream of channel ``c`` is ``<prefix>sserelay:log:<c>``, and the pub/sub
channel is ``<prefix><c>``: the prefix (empty by default) separates deployments that
share one Redis (pub/sub ignores the database number).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from .errors import BrokerUnavailable, ConfigError, PublishError

try:
    import redis
    import redis.asyncio
    from redis import exceptions as redis_errors
except ImportError as exc:  # whatever imports us (CLI, API, relay) gets the extra named
    raise ConfigError("Redis needs the redis package: pip install 'sserelay[redis]'") from exc

from .durable import prepare
from .publish import REDIS_LOG, REDIS_SCHEMES, check_publish, durable_choice, refuse_own_fields
from .replay import SharedReads

log = logging.getLogger("sserelay.redis_log")

#: Raw (non-durable) PUBLISH payloads: Redis takes far more, but every relay holds each
#: message in its output buffer; events larger than this belong in a durable channel.
MAX_RAW_PAYLOAD_BYTES = 1024 * 1024
#: Durable events whose data is larger are notified by id only; relays read the body.
LARGE_DATA_BYTES = 7999
LOG_KEY = "sserelay:log:"
_MASK = (1 << 64) - 1

# The position of the channel's last entry, even when retention emptied the stream.
_LAST_ID = """
local function last_id(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last > 0 then return last[1][1] end
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then return info[i + 1] end
    end
  end
  return '0-0'
end
"""

#: KEYS: stream. ARGV: pub/sub channel, data, event ('' none), maxlen (0 none),
#: max age ms (0 none), large threshold (bytes). Returns {id, prev}.
PUBLISH_LUA = (
    _LAST_ID
    + """
local key = KEYS[1]
local data, event = ARGV[2], ARGV[3]
local maxlen, max_age = tonumber(ARGV[4]), tonumber(ARGV[5])
local prev = last_id(key)
local id
if event ~= '' then
  id = redis.call('XADD', key, '*', 'd', data, 'p', prev, 'e', event)
else
  id = redis.call('XADD', key, '*', 'd', data, 'p', prev)
end
if maxlen > 0 then redis.call('XTRIM', key, 'MAXLEN', '~', maxlen) end
if max_age > 0 then
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', key, 'MINID', '~', string.format('%d', ms - max_age))
end
local head = '{"seq":"' .. id .. '","prev":"' .. prev .. '"'
local msg
if string.len(data) > tonumber(ARGV[6]) then
  msg = head .. ',"large":true}'
else
  msg = head .. ',"data":' .. cjson.encode(data)
  if event ~= '' then msg = msg .. ',"event":' .. cjson.encode(event) end
  msg = msg .. '}'
end
redis.call('PUBLISH', ARGV[1], msg)
return {id, prev}
"""
)

#: KEYS: stream. Returns the last id handed out ('0-0' if none).
HEAD_LUA = _LAST_ID + "return last_id(KEYS[1])\n"

#: KEYS: stream. ARGV: live id, lower bound ('-' or '(id'), n. The id after which at
#: most n entries lead to live, or false if there are no more than n.
BACK_LUA = """
local n = tonumber(ARGV[3])
local r = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', n + 1)
if #r > n then return r[#r][1] end
return false
"""


# -- ids -----------------------------------------------------------------------------


def position(entry_id: str | bytes) -> int:
    """A stream entry id ``ms-seq`` as an integer (``ms << 64 | seq``), same order."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms) << 64 | int(seq or 0)


def entry_id(pos: int) -> str:
    """The stream entry id of a position: the inverse of :func:`position`."""
    return f"{pos >> 64}-{pos & _MASK}"


def is_redis_url(text: str) -> bool:
    return text.startswith(REDIS_SCHEMES)


def stream_key(prefix: str, channel: str) -> str:
    return f"{prefix}{LOG_KEY}{channel}"


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _retention_args(count: int | None, age: float | None) -> tuple[int, int]:
    if count is not None and (isinstance(count, bool) or count < 1):
        raise ConfigError(f"retention_count must be at least 1, not {count!r}")
    if age is not None and not age > 0:
        raise ConfigError(f"retention_age must be positive, not {age!r}")
    return count or 0, round(age * 1000) if age else 0


class StreamEvent(NamedTuple):
    """One entry of a channel's stream, as :class:`RedisLog` reads it."""

    id: int
    event: str | None
    data: str
    #: The position of the entry that came before it when it was published.
    prev: int


def _stream_event(entry: Any) -> StreamEvent:
    raw_id, fields = entry
    event = fields.get(b"e")
    prev = fields.get(b"p")
    return StreamEvent(
        position(raw_id),
        event.decode(errors="replace") if event else None,
        fields.get(b"d", b"").decode(errors="replace"),
        position(prev) if prev else 0,
    )


# -- publishing ----------------------------------------------------------------------


class RedisBus:
    """Publish to relays that use Redis as their bus: sync and async, like
    :func:`sserelay.publish` / :func:`sserelay.apublish` (which take a Redis URL or one of
    these too).

    ``prefix`` must match the relays' ``redis_prefix``. ``retention_count`` and
    ``retention_age`` (seconds) trim each durable channel's stream as it is published to
    (``MAXLEN ~`` / ``MINID ~``: approximate, so a little more may be kept). ``aclient``:
    an async client to publish with (its owner closes it), instead of one of its own.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "",
        retention_count: int | None = None,
        retention_age: float | None = None,
        aclient: redis.asyncio.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._trim = _retention_args(retention_count, retention_age)
        self._sync: redis.Redis | None = None
        self._sync_script: Any = None
        self._async = aclient
        self._owns_async = aclient is None
        self._async_script: Any = None if aclient is None else aclient.register_script(PUBLISH_LUA)

    # The clients are made on first use: a RedisBus can be built at import time.

    def _client(self) -> tuple[redis.Redis, Any]:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_timeout=10)
            self._sync_script = self._sync.register_script(PUBLISH_LUA)
        return self._sync, self._sync_script

    def _aclient(self) -> tuple[redis.asyncio.Redis, Any]:
        if self._async is None:
            self._async = redis.asyncio.Redis.from_url(self.url, socket_timeout=10)
            self._async_script = self._async.register_script(PUBLISH_LUA)
        return self._async, self._async_script

    def _durable_args(
        self, channel: str, data: Any, event: str | None
    ) -> tuple[list[str], list[Any]]:
        channel, text, event = prepare(channel, data, event)
        maxlen, max_age = self._trim
        keys = [stream_key(self.prefix, channel)]
        return keys, [self.prefix + channel, text, event or "", maxlen, max_age, LARGE_DATA_BYTES]

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
        durable: bool | None = None,
    ) -> str | None:
        """Publish one event; return its stream entry id if durable (the default: the log
        is always there on Redis), else None. ``id``/``retry`` need ``durable=False`` (see
        :func:`sserelay.publish.refuse_own_fields`)."""
        durable = durable_choice(durable, id, retry)
        if durable is not False:
            refuse_own_fields(id, retry, REDIS_LOG)
        payload = check_publish(channel, data, event, id, retry, durable, MAX_RAW_PAYLOAD_BYTES)
        client, script = self._client()
        try:
            if durable is False:
                assert payload is not None
                client.publish(self.prefix + channel, payload)
                return None
            keys, args = self._durable_args(channel, data, event)
            new_id, _ = script(keys=keys, args=args)
        except redis_errors.RedisError as exc:
            raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
        return str(new_id.decode())

    async def apublish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
        durable: bool | None = None,
    ) -> str | None:
        """Async twin of :meth:`publish`."""
        durable = durable_choice(durable, id, retry)
        if durable is not False:
            refuse_own_fields(id, retry, REDIS_LOG)
        payload = check_publish(channel, data, event, id, retry, durable, MAX_RAW_PAYLOAD_BYTES)
        client, script = self._aclient()
        try:
            if durable is False:
                assert payload is not None
                await client.publish(self.prefix + channel, payload)
                return None
            keys, args = self._durable_args(channel, data, event)
            new_id, _ = await script(keys=keys, args=args)
        except redis_errors.RedisError as exc:
            raise PublishError(f"publishing on {channel!r} failed: {exc}") from exc
        return str(new_id.decode())

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        self.close()
        if self._async is not None and self._owns_async:
            await self._async.aclose()
            self._async = None

    def __enter__(self) -> RedisBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RedisBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the relay's log -----------------------------------------------------------------


class RedisLog(SharedReads):
    """The :class:`~sserelay.broker.EventLog` on Redis Streams, for one relay: a small
    connection pool for reads, publishes (``POST /publish``) and trimming."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        batch: int = 500,
        max_connections: int = 4,
        retention_count: int | None = None,
        retention_age: float | None = None,
    ) -> None:
        super().__init__()
        self.batch = batch
        self.prefix = prefix
        self._pool = pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_timeout=10,
            socket_connect_timeout=5,
            socket_keepalive=True,
            client_name="sserelay-reader",
        )
        self.client = redis.asyncio.Redis(connection_pool=pool)
        # Publishes (POST /publish) share the pool.
        self.bus = RedisBus(
            url,
            prefix=prefix,
            retention_count=retention_count,
            retention_age=retention_age,
            aclient=self.client,
        )
        self._head = self.client.register_script(HEAD_LUA)
        self._back = self.client.register_script(BACK_LUA)

    async def open(self) -> None:
        """Nothing to do: connections are made on first use."""

    async def close(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()  # a pool given to Redis() is not closed with it

    def key(self, channel: str) -> str:
        return stream_key(self.prefix, channel)

    async def _call(self, what: str, channel: str, call: Any) -> Any:
        try:
            return await call
        except redis_errors.RedisError as exc:
            raise BrokerUnavailable(f"{what} of {channel!r} failed: {exc}") from exc

    async def installed(self) -> bool:
        """Streams with exclusive ranges and ``MINID`` need Redis 6.2 or later."""

        async def ask() -> bool:
            info = await self._call("asking the version", "", self.client.info("server"))
            version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
            if version < (6, 2):
                log.error("Redis %s is too old for durable channels (6.2+)", version)
                return False
            return True

        return await self._shared(("installed",), ask)

    async def head(self, channel: str) -> int:
        async def ask() -> int:
            last = await self._call(
                "reading the log", channel, self._head(keys=[self.key(channel)])
            )
            return position(last)

        return await self._shared(("head", channel), ask)

    async def read_after(
        self, channel: str, after: int, *, shared: bool = True
    ) -> Sequence[StreamEvent]:
        start = f"({entry_id(after)}" if after else "-"

        async def ask() -> list[StreamEvent]:
            entries = await self._call(
                "reading the log",
                channel,
                self.client.xrange(self.key(channel), start, "+", count=self.batch),
            )
            return [_stream_event(e) for e in entries]

        if not shared:
            self.queries += 1
            return await ask()
        return await self._shared(("after", channel, after), ask)

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        # Entry ids are not contiguous: the loss shows in the first entry read after
        # `after`, whose `prev` is past it (see Replay._replay_channel).
        return None

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        low = f"({entry_id(floor)}" if floor else "-"
        args: list[str | int] = [entry_id(live), low, n]

        async def ask() -> int:
            found = await self._call(
                "reading the log", channel, self._back(keys=[self.key(channel)], args=args)
            )
            return floor if not found else position(found)

        return await self._shared(("back", channel, live, n, floor), ask)

    async def prune(self, max_age: datetime.timedelta | None, max_count: int | None) -> int:
        """Trim every channel's stream (``XTRIM``, exact): what ``sserelay prune`` and the
        relay's retention settings do, also for channels nobody publishes to any more."""
        deleted = 0
        pattern = _escape_glob(self.prefix + LOG_KEY) + "*"
        async for key in self.client.scan_iter(match=pattern, count=500, _type="stream"):
            if max_count is not None:
                deleted += int(await self.client.xtrim(key, maxlen=max_count, approximate=False))
            if max_age is not None:
                now_ms = int((await self.client.time())[0]) * 1000
                minid = max(now_ms - int(max_age.total_seconds() * 1000), 0)
                deleted += int(await self.client.xtrim(key, minid=minid, approximate=False))
        return deleted

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        timeout: float = 5.0,
    ) -> int | str | None:
        return await self.bus.apublish(channel, data, event=event, id=id)

    def previous(self, row: Any) -> int:
        return int(row.prev)

    def notified(self, obj: dict[str, Any]) -> tuple[int, int] | None:
        seq, prev = obj.get("seq"), obj.get("prev")
        if not isinstance(seq, str) or not isinstance(prev, str):
            return None
        try:
            return position(seq), position(prev)
        except ValueError:
            return None

    def format_id(self, position: int) -> str:
        return entry_id(position)
