"""The Redis event log: one stream per durable channel, read by the relay.

The counterpart of :mod:`sserelay.bus.postgres.log`. A position is a stream entry id
``ms-seq`` as the integer ``ms << 64 | seq`` (:mod:`sserelay.wire.ids`); ids are not
contiguous, so "the next event" is the one whose notification names the relay's
position as its predecessor (``prev``), and a loss to retention shows as a first entry
read whose ``prev`` is past the reader's position.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis.asyncio
from redis import exceptions as redis_errors

from ...core.protocols import Notified
from ...core.reads import SharedReads
from ...errors import BrokerUnavailable
from ...wire.ids import StreamEntryIds, entry_id, entry_position
from .publish import RedisBus
from .scripts import BACK_LUA, HEADS_LUA, LOG_KEY, escape_glob, stream_key

log = logging.getLogger("sserelay.redis")

T = TypeVar("T")


_IDS = StreamEntryIds()


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
        entry_position(raw_id),
        event.decode(errors="replace") if event else None,
        fields.get(b"d", b"").decode(errors="replace"),
        entry_position(prev) if prev else 0,
    )


def parse_notification(payload: str) -> Notified | None:
    """What the publish script notifies (``{"seq": "<id>", "prev": "<id>", ...}``), parsed;
    None if ``payload`` is not that."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    seq, prev = obj.get("seq"), obj.get("prev")
    if not isinstance(seq, str) or not isinstance(prev, str):
        return None
    try:
        position, before = _IDS.parse_id(seq), _IDS.parse_id(prev)
    except ValueError:
        return None
    data, event = obj.get("data"), obj.get("event")
    if obj.get("large") or not isinstance(data, str):
        data = None
    return Notified(position, before, event if isinstance(event, str) else None, data)


class RedisLog(StreamEntryIds, SharedReads):
    """The :class:`~sserelay.core.protocols.EventLog` on Redis Streams, for one relay: a
    small connection pool for reads, publishes (``POST /publish``) and trimming."""

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
        #: Publishes (POST /publish) share the pool.
        self.bus = RedisBus(
            url,
            prefix=prefix,
            retention_count=retention_count,
            retention_age=retention_age,
            aclient=self.client,
        )
        self._heads = self.client.register_script(HEADS_LUA)
        self._back = self.client.register_script(BACK_LUA)

    async def open(self) -> None:
        """Nothing to do: connections are made on first use."""

    async def close(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()  # a pool given to Redis() is not closed with it

    def key(self, channel: str) -> str:
        return stream_key(self.prefix, channel)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except (redis_errors.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"{what} failed: {exc}") from exc

    async def installed(self) -> bool:
        """Streams with exclusive ranges and ``MINID`` need Redis 6.2 or later."""

        async def ask() -> bool:
            info = await self._call("asking Redis its version", self.client.info("server"))
            version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
            if version < (6, 2):
                log.error("Redis %s is too old for durable channels (6.2+)", version)
                return False
            return True

        return await self._shared(("installed",), ask)

    async def heads(self, channels: Sequence[str]) -> dict[str, int]:
        wanted = sorted(set(channels))

        async def ask() -> dict[str, int]:
            keys = [self.key(c) for c in wanted]
            found = await self._call("reading the streams' heads", self._heads(keys=keys))
            return {c: entry_position(last) for c, last in zip(wanted, found, strict=True)}

        return await self._shared(("heads", *wanted), ask)

    async def read_after(
        self, channel: str, after: int, *, shared: bool = True
    ) -> Sequence[StreamEvent]:
        start = f"({entry_id(after)}" if after else "-"

        async def ask() -> list[StreamEvent]:
            read = self.client.xrange(self.key(channel), start, "+", count=self.batch)
            entries = await self._call(f"reading the log of {channel!r}", read)
            return [_stream_event(e) for e in entries or ()]

        if not shared:
            return await self._unshared(ask)
        return await self._shared(("after", channel, after), ask)

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        # Entry ids are not contiguous: the loss shows in the first entry read after
        # `after`, whose `prev` is past it (see the catch-up).
        return None

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        low = f"({entry_id(floor)}" if floor else "-"
        args: list[str | int] = [entry_id(live), low, n]

        async def ask() -> int:
            found = await self._call(
                f"reading the log of {channel!r}", self._back(keys=[self.key(channel)], args=args)
            )
            return floor if not found else entry_position(found)

        return await self._shared(("back", channel, live, n, floor), ask)

    async def prune(self, max_age: datetime.timedelta | None, max_count: int | None) -> int:
        """Trim every channel's stream (``XTRIM``, exact): what ``sserelay prune`` and the
        relay's retention settings do, also for channels nobody publishes to any more."""
        deleted = 0
        pattern = escape_glob(self.prefix + LOG_KEY) + "*"
        try:
            async for key in self.client.scan_iter(match=pattern, count=500, _type="stream"):
                if max_count is not None:
                    trim = self.client.xtrim(key, maxlen=max_count, approximate=False)
                    deleted += int(await trim)
                if max_age is not None:
                    now_ms = int((await self.client.time())[0]) * 1000
                    minid = max(now_ms - int(max_age.total_seconds() * 1000), 0)
                    deleted += int(await self.client.xtrim(key, minid=minid, approximate=False))
        except (redis_errors.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"pruning the streams failed: {exc}") from exc
        return deleted

    def previous(self, row: Any) -> int:
        return int(row.prev)
