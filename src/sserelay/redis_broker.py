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
import random
import time
import uuid
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from .broker import OnListening, OnMessage

log = logging.getLogger("sserelay.redis")

CLIENT_NAME = "sserelay-listener"
#: Channels per SUBSCRIBE/UNSUBSCRIBE command.
_BATCH = 200

#: What a lost or refused connection raises.
ERRORS = (redis_errors.RedisError, OSError, TimeoutError)


class ProbeFailed(Exception):
    """The liveness probe did not come back in time."""


class RedisListener:
    """The :class:`~sserelay.broker.Broker` for Redis pub/sub."""

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
        self.url = url
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._on_message = on_message
        self._on_listening = on_listening
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
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
        self._wanted: set[str] = set()
        #: Channels whose last command sent was SUBSCRIBE.
        self._subscribed: set[str] = set()
        #: Confirmations still to come per channel (SUBSCRIBE and UNSUBSCRIBE each get one).
        self._pending: dict[str, int] = {}
        #: Subscribed and confirmed: live.
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self._probe_sent: float | None = None
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.notifications = 0
        self.last_error: str | None = None
        #: The server's id of the current connection (``CLIENT KILL ID`` ends it).
        self.client_id: int | None = None
        #: Seconds a PING took to come back, from the latest probe.
        self.lag: float | None = None
        self.lag_observer: Any = None  # a prometheus Histogram-like with .observe(), optional
        self.connected_event = asyncio.Event()

    # -- Broker interface ------------------------------------------------------------

    def listen(self, channel: str) -> None:
        if channel in self._active and channel not in self._wanted:
            # Wanted again before its UNSUBSCRIBE went out: it never stopped, so no new
            # SUBSCRIBE will confirm it. Say it is live (soon: not inside the caller).
            asyncio.get_running_loop().call_soon(self._still_listening, channel)
        self._wanted.add(channel)
        self._wake.set()

    def _still_listening(self, channel: str) -> None:
        if channel in self._active and channel in self._wanted:
            self._on_listening([channel])

    def unlisten(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._wake.set()

    def is_listening(self, channel: str) -> bool:
        return self.connected and channel in self._active

    @property
    def healthy(self) -> bool:
        return self.connected and self._wanted <= self._active

    def status(self) -> dict[str, Any]:
        return {
            "broker": "redis",
            "connected": self.connected,
            "channels": len(self._active),
            "connects": self.connects,
            "last_error": None if self.connected else self.last_error,
        }

    # -- the connection task ---------------------------------------------------------

    async def run(self) -> None:
        """Hold the pub/sub connection until cancelled; reconnect with jittered backoff."""
        failures = 0
        while True:
            connects_before = self.connects
            try:
                await self._session()
            except (*ERRORS, ProbeFailed) as exc:
                self.last_error = _one_line(exc)
            except Exception as exc:  # a client-library surprise must not end the listener
                log.exception("Redis listener failed")
                self.last_error = _one_line(exc)
            finally:
                await self._disconnect()
            if self.connects > connects_before:
                failures = 0
                log.warning("Redis listener connection lost: %s; reconnecting", self.last_error)
            elif failures == 0:
                log.warning("cannot reach Redis: %s; retrying", self.last_error)
            failures += 1
            delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures - 1, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

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
        try:
            if self.connects:
                self.reconnects += 1
            self.connects += 1
            self.connected = True
            self.connected_event.set()
            self.last_error = None
            log.info("Redis listener connected (%s channels to SUBSCRIBE)", len(self._wanted))
            await self._serve(conn, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await reader

    async def _serve(self, conn: AbstractConnection, reader: asyncio.Task[None]) -> None:
        next_probe = time.monotonic() + self.probe_interval
        while True:
            self._wake.clear()
            if reader.done():
                reader.result()  # raises what ended it
                raise redis_errors.ConnectionError("connection to Redis closed")
            await self._sync(conn)
            now = time.monotonic()
            if self._probe_sent is not None and now - self._probe_sent > self.probe_timeout:
                raise ProbeFailed(f"probe not answered within {self.probe_timeout}s")
            if now >= next_probe:
                if self._probe_sent is None:  # one probe in flight at a time
                    self._probe_sent = now
                    await self._send(conn, "PING", repr(now))
                next_probe = now + self.probe_interval * random.uniform(0.9, 1.1)
                continue
            timeout = next_probe - now
            if self._probe_sent is not None:
                timeout = min(timeout, self._probe_sent + self.probe_timeout - now)
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait(
                    {wake, reader},
                    timeout=max(timeout, 0.01),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                wake.cancel()

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
        if channel is None:
            return
        self.notifications += 1
        if channel in self._wanted:
            try:
                self._on_message(channel, payload.decode(errors="replace"))
            except Exception:
                # One bad message must not take the listener (and every stream) down.
                log.exception("delivering a message on %r failed; dropped it", channel)

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

    def _probe_answered(self, payload: bytes) -> None:
        try:
            sent = float(payload)
        except ValueError:
            return
        if sent == self._probe_sent:
            self._probe_sent = None
            self.lag = time.monotonic() - sent
            if self.lag_observer is not None:
                self.lag_observer.observe(self.lag)
            self._wake.set()

    async def _disconnect(self) -> None:
        was_connected = self.connected
        self.connected = False
        self.connected_event.clear()
        self._active.clear()
        self._subscribed.clear()
        self._pending.clear()
        self._probe_sent = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.disconnect()
        if was_connected:
            log.info("Redis listener disconnected")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
