"""The Redis listener: one pub/sub connection per process.

The counterpart of :mod:`sserelay.bus.postgres.listener` for Redis. One task owns one
connection (:meth:`RedisListener.run`). It SUBSCRIBEs to a channel when the core gets
its first subscriber and UNSUBSCRIBEs after the last leaves, batching changes. As on
PostgreSQL, every channel has two pub/sub names: ``<prefix><channel>`` for plain
publishes and ``<prefix>sserelay.d.<channel>`` for durable ones (only the publish
script sends there). A second task reads what the server pushes: subscription
confirmations and messages, in the order Redis sent them. A channel is live once the
server has confirmed both of its SUBSCRIBEs: everything published after that point
reaches the relay, as after a completed LISTEN.

Liveness: TCP keepalives, plus a ``PING`` every ``probe_interval`` seconds (allowed in
subscribed mode; its ``pong`` comes back on the same connection, behind any message
already sent). A probe not answered in ``probe_timeout``, or any connection error,
closes the connection; the task reconnects with jittered exponential backoff and
SUBSCRIBEs every live channel again. Streams stay open meanwhile. Messages published
while the connection is down are lost, as Redis pub/sub keeps nothing: durable
channels are filled again from their streams (see :mod:`sserelay.bus.redis.log`).

Channel names are used as they are, after the optional ``prefix`` (pub/sub is global to
a Redis server, whatever the database number: a prefix separates deployments that
share one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from ...core.protocols import BusSink, Notified
from ..listener import Listener, ProbeFailed
from .log import parse_notification
from .scripts import DURABLE_PREFIX

log = logging.getLogger("sserelay.redis")

CLIENT_NAME = "sserelay-listener"
#: Channels per SUBSCRIBE/UNSUBSCRIBE command (each under its two names).
_BATCH = 200

#: What a lost or refused connection raises.
ERRORS = (redis_errors.RedisError, OSError, TimeoutError, ProbeFailed)


class RedisListener(Listener[AbstractConnection]):
    """The :class:`~sserelay.core.protocols.Listener` for Redis pub/sub."""

    broker = "redis"
    errors = ERRORS
    _log = log
    _what = "Redis listener"
    _bus = "Redis"
    _subscribe = "SUBSCRIBE"
    _item = "message"

    def __init__(
        self,
        url: str,
        sink: BusSink,
        *,
        prefix: str = "",
        client_name: str = CLIENT_NAME,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            sink,
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )
        self.url = url
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._durable_bytes = (prefix + DURABLE_PREFIX).encode()
        # No socket_timeout: the reader blocks until the server sends; the probe and
        # TCP keepalives find a dead peer. The URL may set TLS, a password, a database.
        pool = ConnectionPool.from_url(
            url,
            client_name=client_name,
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
            protocol=2,
            socket_timeout=None,
        )
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        # RESP2 whatever the URL or the redis-py version says: subscription replies and
        # messages then come back as plain replies, in order, from read_response().
        self._connection_kwargs.update(protocol=2, socket_timeout=None)
        for key in [k for k in self._connection_kwargs if k.startswith("maint_notifications")]:
            del self._connection_kwargs[key]  # RESP3-only (redis-py 7+), set by ?protocol=3
        #: A private channel, so the connection is in subscribed mode from the start.
        self.probe_channel = f"{prefix}sserelay.probe.{uuid.uuid4().hex[:12]}".encode()
        #: Channels whose last command sent was SUBSCRIBE.
        self._subscribed: set[str] = set()
        #: Confirmations still to come per channel (each name's SUBSCRIBE and UNSUBSCRIBE
        #: get one).
        self._pending: dict[str, int] = {}
        #: The task reading what the server pushes, while a session is up.
        self._reader: asyncio.Task[None] | None = None
        #: The server's id of the current connection (``CLIENT KILL ID`` ends it).
        self.client_id: int | None = None

    # -- the connection task ---------------------------------------------------------

    async def _session(self) -> None:
        conn = self._connection_class(**self._connection_kwargs)
        self._conn = conn
        await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        await conn.send_command("CLIENT", "ID", check_health=False)
        self.client_id = int(await conn.read_response())
        self._subscribed.clear()
        self._pending.clear()
        self._active.clear()
        await self._send(conn, "SUBSCRIBE", self.probe_channel)
        reader = asyncio.create_task(self._read(conn), name="sserelay-redis-reader")
        reader.add_done_callback(lambda _: self._wake.set())
        self._reader = reader
        try:
            self._connected()
            await self._serve(conn)
        finally:
            self._reader = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await reader

    def _parse(self, payload: str) -> Notified | None:
        return parse_notification(payload)

    async def _step(self, conn: AbstractConnection) -> None:
        if self._reader is not None and self._reader.done():
            self._reader.result()  # raises what ended it
            raise redis_errors.ConnectionError("connection to Redis closed")
        await self._sync(conn)

    async def _send_probe(self, conn: AbstractConnection, payload: str) -> None:
        await self._send(conn, "PING", payload)

    async def _send(self, conn: AbstractConnection, *args: Any) -> None:
        # redis-py reconnects a closed connection on send: not here, where the state of
        # the subscriptions belongs to this connection.
        if not conn.is_connected:
            raise redis_errors.ConnectionError("connection to Redis lost")
        await conn.send_command(*args, check_health=False)

    async def _sync(self, conn: AbstractConnection) -> None:
        """SUBSCRIBE what is wanted and UNSUBSCRIBE what is not, in batches."""
        for add, drop in self._changes(_BATCH, self._subscribed):
            for channel in drop:
                # Not live from the moment the UNSUBSCRIBE is sent: a subscriber arriving
                # meanwhile waits for the confirmation of the SUBSCRIBE that follows.
                self._subscribed.discard(channel)
                self._active.discard(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 2
            for channel in add:
                self._subscribed.add(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 2
            if drop:
                await self._send(conn, "UNSUBSCRIBE", *self._names(drop))
            if add:
                await self._send(conn, "SUBSCRIBE", *self._names(add))

    def _names(self, channels: list[str]) -> list[bytes]:
        names = []
        for channel in channels:
            raw = channel.encode()
            names += [self._prefix_bytes + raw, self._durable_bytes + raw]
        return names

    # -- what the server pushes ------------------------------------------------------

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            reply = await conn.read_response()
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
            if not isinstance(reply, list) or len(reply) < 2:
                continue
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self._deliver(reply[1], reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                self._confirmed(reply[1])
            elif kind == b"pong":
                self._probe_answered(reply[1])

    def _channel(self, raw: bytes) -> tuple[str, bool] | None:
        """(channel, durable) for a pub/sub name, None if it is not one of ours."""
        if raw.startswith(self._durable_bytes):
            name, durable = raw[len(self._durable_bytes) :], True
        elif raw.startswith(self._prefix_bytes):
            name, durable = raw[len(self._prefix_bytes) :], False
        else:
            return None
        try:
            return name.decode(), durable
        except UnicodeDecodeError:
            return None

    def _deliver(self, raw_channel: bytes, payload: bytes) -> None:
        found = self._channel(raw_channel)
        if found is not None:
            self._hand_over(found[0], payload.decode(errors="replace"), found[1])

    def _confirmed(self, raw_channel: bytes) -> None:
        if raw_channel == self.probe_channel:
            return
        found = self._channel(raw_channel)
        if found is None or found[0] not in self._pending:
            return
        channel = found[0]
        left = self._pending[channel] - 1
        if left > 0:
            self._pending[channel] = left
            return
        del self._pending[channel]
        if channel in self._subscribed:
            self._active.add(channel)
            if channel in self._wanted:
                self._sink.on_listening([channel])

    def _probe_answered(self, payload: str | bytes) -> None:
        super()._probe_answered(payload)
        # The serve loop may be waiting until the probe's deadline: let it count again.
        self._wake.set()

    async def _close(self, conn: AbstractConnection) -> None:
        await conn.disconnect()

    async def _disconnect(self) -> None:
        await super()._disconnect()
        self._subscribed.clear()
        self._pending.clear()
