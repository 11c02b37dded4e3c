"""The Redis broker: one pub/sub connection per process.

The counterpart of :mod:`sserelay.postgres` for Redis. One task owns one
connection (:meth:`RedisListener.run`). It SUBSCRIBEs to a channel when the hub
gets its first subscriber and UNSUBSCRIBEs after the last leaves, batching
changes. A second task reads what the server pushes: subscription confirmations
and messages, in the order Redis sent them. A channel is live once the server's
confirmation of its SUBSCRIBE has been read: everything published after that
point reaches the relay, as after a completed LISTEN.

Liveness: TCP keepalives, plus a ``PING`` every ``probe_interval`` seconds (allowed
in subscribed mode; its ``pong`` comes back on the same connection, behind any
message already sent). A probe not answered in ``probe_timeout``, or any
connection error, closes the connection; the task reconnects with jittered
exponential backoff and SUBSCRIBEs every live channel again. Streams stay open
meanwhile; only ``healthy`` changes. Messages published while the connection is
down are lost, as Redis pub/sub keeps nothing: durable channels are filled again
from their streams (see :mod:`sserelay.redis_log`).

Channel names are used as they are, after the optional ``prefix`` (pub/sub is
global to a Redis server, whatever the database number: a prefix separates
deployments that share one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from .errors import ConfigError

try:
    from redis import exceptions as redis_errors
    from redis.asyncio.connection import AbstractConnection, ConnectionPool
except ImportError as exc:  # whatever imports us (CLI, API, relay) gets the extra named
    raise ConfigError("Redis needs the redis package: pip install 'sserelay[redis]'") from exc

from .broker import OnListening, OnMessage
from .listening import Listener, ProbeFailed

log = logging.getLogger("sserelay.redis")

CLIENT_NAME = "sserelay-listener"
#: Channels per SUBSCRIBE/UNSUBSCRIBE command.
_BATCH = 200

#: What a lost or refused connection raises.
ERRORS = (redis_errors.RedisError, OSError, TimeoutError)


class RedisListener(Listener[AbstractConnection]):
    """The :class:`~sserelay.broker.Broker` for Redis pub/sub."""

    broker = "redis"
    #: Anything: a client-library surprise must not end the listener (see _session).
    errors = (Exception,)
    _log = log
    _what = "Redis listener"
    _bus = "Redis"
    _subscribe = "SUBSCRIBE"
    _item = "message"

    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        on_listening: OnListening,
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
            on_message,
            on_listening,
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )
        self.url = url
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
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
        #: Confirmations still to come per channel (SUBSCRIBE and UNSUBSCRIBE each get one).
        self._pending: dict[str, int] = {}
        #: The task reading what the server pushes, while a session is up.
        self._reader: asyncio.Task[None] | None = None
        #: The server's id of the current connection (``CLIENT KILL ID`` ends it).
        self.client_id: int | None = None

    # -- the connection task ---------------------------------------------------------

    async def _session(self) -> None:
        try:
            await self._connect_and_serve()
        except (*ERRORS, ProbeFailed):
            raise
        except Exception:
            # Not a lost connection: say so loudly, then reconnect all the same.
            log.exception("Redis listener failed")
            raise

    async def _connect_and_serve(self) -> None:
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
        while True:
            add = sorted(self._wanted - self._subscribed)[:_BATCH]
            drop = sorted(self._subscribed - self._wanted)[:_BATCH]
            if not add and not drop:
                return
            for channel in drop:
                # Not live from the moment the UNSUBSCRIBE is sent: a subscriber arriving
                # meanwhile waits for the confirmation of the SUBSCRIBE that follows.
                self._subscribed.discard(channel)
                self._active.discard(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 1
            for channel in add:
                self._subscribed.add(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 1
            if drop:
                await self._send(conn, "UNSUBSCRIBE", *(self._wire(c) for c in drop))
            if add:
                await self._send(conn, "SUBSCRIBE", *(self._wire(c) for c in add))

    def _wire(self, channel: str) -> bytes:
        return self._prefix_bytes + channel.encode()

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

    def _name(self, raw: bytes) -> str | None:
        """The channel name of a wire name, None if it is not one of ours."""
        if not raw.startswith(self._prefix_bytes):
            return None
        try:
            return raw[len(self._prefix_bytes) :].decode()
        except UnicodeDecodeError:
            return None

    def _deliver(self, raw_channel: bytes, payload: bytes) -> None:
        channel = self._name(raw_channel)
        if channel is not None:
            self._hand_over(channel, payload.decode(errors="replace"))

    def _confirmed(self, raw_channel: bytes) -> None:
        if raw_channel == self.probe_channel:
            return
        channel = self._name(raw_channel)
        if channel is None or channel not in self._pending:
            return
        left = self._pending[channel] - 1
        if left > 0:
            self._pending[channel] = left
            return
        del self._pending[channel]
        if channel in self._subscribed:
            self._active.add(channel)
            if channel in self._wanted:
                self._on_listening([channel])

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
