"""The PostgreSQL broker: one LISTEN connection per process.

The connection is owned by one task (:meth:`PostgresListener.run`). It LISTENs
on a channel when the hub gets its first subscriber and UNLISTENs after the last
leaves, batching changes. Between commands it waits for the socket to become
readable and reads notifications straight from libpq, so LISTEN never waits
behind a ``notifies()`` generator and no polling interval adds latency.

Liveness: TCP keepalives, plus a probe every ``probe_interval`` seconds that
NOTIFYs the listener's own private channel with a timestamp. The probe proves
the whole path (send, commit, deliver) and measures the notification lag. A
failed or late probe, or any connection error, closes the connection; the task
reconnects with jittered exponential backoff and LISTENs every live channel
again. Streams stay open meanwhile; only ``healthy`` changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from .broker import OnListening, OnMessage

log = logging.getLogger("sserelay.postgres")

APPLICATION_NAME = "sserelay-listener"
#: LISTEN/UNLISTEN statements sent in one round trip.
_BATCH = 200

#: libpq TCP keepalive settings: a silently dead peer is noticed in about 25 s.
KEEPALIVE_PARAMS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class ProbeFailed(Exception):
    """The liveness probe did not come back in time."""


class PostgresListener:
    """The :class:`~sserelay.broker.Broker` for PostgreSQL LISTEN/NOTIFY."""

    def __init__(
        self,
        dsn: str,
        on_message: OnMessage,
        on_listening: OnListening,
        *,
        application_name: str = APPLICATION_NAME,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self._on_message = on_message
        self._on_listening = on_listening
        self.application_name = application_name
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.probe_channel = f"sserelay.probe.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._probe_sent: float | None = None
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.notifications = 0
        self.last_error: str | None = None
        #: Seconds from NOTIFY to receipt, from the latest probe.
        self.lag: float | None = None
        self.lag_observer: Any = None  # a prometheus Histogram-like with .observe(), optional
        self.connected_event = asyncio.Event()

    # -- Broker interface ------------------------------------------------------------

    def listen(self, channel: str) -> None:
        if channel in self._active and channel not in self._wanted:
            # Wanted again before its UNLISTEN went out: it never stopped, so no new
            # LISTEN will confirm it. Say it is live (soon: not inside the caller).
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
            "broker": "postgres",
            "connected": self.connected,
            "channels": len(self._active),
            "connects": self.connects,
            "last_error": None if self.connected else self.last_error,
        }

    # -- the connection task ---------------------------------------------------------

    async def run(self) -> None:
        """Hold the LISTEN connection until cancelled; reconnect with jittered backoff."""
        failures = 0
        while True:
            connects_before = self.connects
            try:
                await self._session()
            except (psycopg.Error, OSError, ProbeFailed, TimeoutError) as exc:
                self.last_error = _one_line(exc)
            finally:
                await self._disconnect()
            if self.connects > connects_before:
                failures = 0
                log.warning("listener connection lost: %s; reconnecting", self.last_error)
            elif failures == 0:
                log.warning("cannot reach PostgreSQL: %s; retrying", self.last_error)
            failures += 1
            delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures - 1, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _session(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=self.application_name,
            connect_timeout=max(1, int(self.connect_timeout)),
            **KEEPALIVE_PARAMS,
        )
        self._conn = conn
        conn.add_notify_handler(self._on_notify)
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.probe_channel)))
        self._active.clear()
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.connected = True
        self.connected_event.set()
        self.last_error = None
        log.info("listener connected (%s channels to LISTEN)", len(self._wanted))

        loop = asyncio.get_running_loop()
        fd = conn.pgconn.socket
        next_probe = time.monotonic() + self.probe_interval
        while True:
            self._wake.clear()
            self._read(conn)
            await self._sync(conn)
            now = time.monotonic()
            if self._probe_sent is not None and now - self._probe_sent > self.probe_timeout:
                raise ProbeFailed(f"probe not answered within {self.probe_timeout}s")
            if now >= next_probe:
                await self._probe(conn)
                next_probe = now + self.probe_interval * random.uniform(0.9, 1.1)
                continue
            timeout = next_probe - now
            if self._probe_sent is not None:
                timeout = min(timeout, self._probe_sent + self.probe_timeout - now)
            # psycopg's own waits take over (and then remove) the fd's reader while a
            # command runs, so the reader is armed afresh for every idle wait.
            loop.add_reader(fd, self._wake.set)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # lands as the wake-up fires, and the task then never stops on shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(timeout, 0.01)):
                        await self._wake.wait()
            finally:
                loop.remove_reader(fd)

    def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take whatever the server sent and deliver its notifications."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("connection to PostgreSQL lost")
        while (n := pgconn.notifies()) is not None:
            self._deliver(n.relname.decode(), n.extra.decode(errors="replace"))

    def _on_notify(self, notify: psycopg.Notify) -> None:
        """Notifications psycopg read while one of our commands was running."""
        self._deliver(notify.channel, notify.payload)

    def _deliver(self, channel: str, payload: str) -> None:
        if channel == self.probe_channel:
            self._probe_answered(payload)
            return
        self.notifications += 1
        if channel in self._wanted:
            try:
                self._on_message(channel, payload)
            except Exception:
                # One bad notification must not take the listener (and every stream) down.
                log.exception("delivering a notification on %r failed; dropped it", channel)

    async def _sync(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN what is wanted and UNLISTEN what is not, in batches."""
        while True:
            add = sorted(self._wanted - self._active)[:_BATCH]
            drop = sorted(self._active - self._wanted)[: _BATCH - len(add)]
            if not add and not drop:
                return
            statements = [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in add]
            statements += [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in drop]
            # Not live from the moment the UNLISTEN is sent: a subscriber arriving while it
            # is in flight must wait for the LISTEN that follows, not be told it is live.
            self._active.difference_update(drop)
            await conn.execute(sql.SQL("; ").join(statements))
            self._active.update(add)
            if add:
                self._on_listening(c for c in add if c in self._wanted)

    async def _probe(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._probe_sent is not None:
            return  # one probe in flight at a time
        self._probe_sent = time.monotonic()
        async with asyncio.timeout(self.probe_timeout):  # not wait_for: see _session
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (self.probe_channel, repr(self._probe_sent))
            )

    def _probe_answered(self, payload: str) -> None:
        try:
            sent = float(payload)
        except ValueError:
            return
        if sent == self._probe_sent:
            self._probe_sent = None
            self.lag = time.monotonic() - sent
            if self.lag_observer is not None:
                self.lag_observer.observe(self.lag)

    async def _disconnect(self) -> None:
        was_connected = self.connected
        self.connected = False
        self.connected_event.clear()
        self._active.clear()
        self._probe_sent = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):  # not wait_for: see _session
                    await conn.close()
        if was_connected:
            log.info("listener disconnected")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
