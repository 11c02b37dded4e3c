"""Publishing on Redis: sync and async, durable into the channel's stream by default.

:class:`RedisBus` is what :func:`sserelay.publish` / :func:`sserelay.apublish` use when
given a Redis URL (or one of these), and what the relay's ``POST /publish`` uses on
Redis. A durable publish runs the atomic script of :mod:`~sserelay.bus.redis.scripts`
and returns the stream entry id; ``durable=False`` is a plain ``PUBLISH`` of the event's
JSON envelope. The stream numbers a channel's events itself, so an event with its own
``id`` or a ``retry`` needs ``durable=False``
(:meth:`~sserelay.wire.message.Message.refuse_own_fields`).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis import exceptions as redis_errors

from ...errors import ConfigError, InvalidEvent, PublishError
from ...wire.message import Message
from .scripts import (
    LARGE_DATA_BYTES,
    MAX_RAW_PAYLOAD_BYTES,
    PUBLISH_LUA,
    durable_channel,
    stream_key,
)

BUS = "Redis PUBLISH"
#: The log, as :meth:`~sserelay.wire.message.Message.refuse_own_fields` names it.
LOG = "the channel's Redis stream"


def retention_args(count: int | None, age: float | None) -> tuple[int, int]:
    if count is not None and (isinstance(count, bool) or count < 1):
        raise ConfigError(f"retention_count must be at least 1, not {count!r}")
    if age is not None and not age > 0:
        raise ConfigError(f"retention_age must be positive, not {age!r}")
    return count or 0, round(age * 1000) if age else 0


def _durable(durable: bool | None, message: Message) -> bool:
    """Durable unless asked not to be: the log is always there on Redis. An event with an
    id or a retry of its own (the log has neither) needs ``durable=False``."""
    if durable is False:
        return False
    if durable:
        if not message.durable_ok:
            raise InvalidEvent("a durable event gets its id from the log and cannot carry retry")
    else:
        message.refuse_own_fields(LOG)
    return True


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
        self._trim = retention_args(retention_count, retention_age)
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

    def _script_args(self, message: Message) -> tuple[list[str], list[Any]]:
        channel, text, event = message.for_log()
        maxlen, max_age = self._trim
        keys = [stream_key(self.prefix, channel)]
        notify = durable_channel(self.prefix, channel)
        return keys, [notify, text, event or "", maxlen, max_age, LARGE_DATA_BYTES]

    def send(self, message: Message, durable: bool | None = None) -> str | None:
        """Publish ``message``; its stream entry id if durable, else None."""
        client, script = self._client()
        try:
            if not _durable(durable, message):
                payload = message.envelope(MAX_RAW_PAYLOAD_BYTES, BUS)
                client.publish(self.prefix + message.channel, payload)
                return None
            keys, args = self._script_args(message)
            new_id, _ = script(keys=keys, args=args)
        except redis_errors.RedisError as exc:
            raise PublishError(f"publishing on {message.channel!r} failed: {exc}") from exc
        return str(new_id.decode())

    async def asend(self, message: Message, durable: bool | None = None) -> str | None:
        """The async twin of :meth:`send`."""
        client, script = self._aclient()
        try:
            if not _durable(durable, message):
                payload = message.envelope(MAX_RAW_PAYLOAD_BYTES, BUS)
                await client.publish(self.prefix + message.channel, payload)
                return None
            keys, args = self._script_args(message)
            new_id, _ = await script(keys=keys, args=args)
        except redis_errors.RedisError as exc:
            raise PublishError(f"publishing on {message.channel!r} failed: {exc}") from exc
        return str(new_id.decode())

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
        is always there on Redis), else None. ``id``/``retry`` need ``durable=False``."""
        return self.send(Message.build(channel, data, event=event, id=id, retry=retry), durable)

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
        message = Message.build(channel, data, event=event, id=id, retry=retry)
        return await self.asend(message, durable)

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
