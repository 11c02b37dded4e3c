"""The PostgreSQL listener: one LISTEN connection per process.

The connection is owned by one task (:meth:`PostgresListener.run`). It LISTENs on a
channel when the core gets its first subscriber and UNLISTENs after the last leaves,
batching changes. For every channel it LISTENs on two names: the channel itself (plain
``NOTIFY``s, ``pg_notify``, non-durable publishes) and the channel's durable name,
which only ``sserelay.publish`` notifies (see ``statements.durable_channel``): so a raw
``NOTIFY`` of user text can never pass for a durable event.

Between commands it waits for the socket to become readable and reads notifications
straight from libpq, so a LISTEN never waits behind a ``notifies()`` generator and no
polling interval adds latency. Notifications are decoded here, in the database's
encoding (UTF-8 for ``SQL_ASCII``, which stores any bytes), with replacement characters:
a payload that is not valid text arrives with U+FFFD in it and is counted; it never ends
the listener.

Liveness: TCP keepalives, plus a probe every ``probe_interval`` seconds that NOTIFYs the
listener's own private channel with a timestamp. The probe proves the whole path (send,
commit, deliver) and measures the notification lag. A failed or late probe, or any
connection error, closes the connection; the task reconnects with jittered exponential
backoff and LISTENs every live channel again. Streams stay open meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from ...core.protocols import BusSink, Notified
from ..listener import Listener, ProbeFailed
from .log import parse_notification
from .statements import durable_channel

log = logging.getLogger("sserelay.postgres")

APPLICATION_NAME = "sserelay-listener"
#: Channels LISTENed (each under its two names) in one round trip.
_BATCH = 200

#: libpq TCP keepalive settings: a silently dead peer is noticed in about 25 s.
KEEPALIVE_PARAMS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class PostgresListener(Listener[psycopg.AsyncConnection[Any]]):
    """The :class:`~sserelay.core.protocols.Listener` for PostgreSQL LISTEN/NOTIFY."""

    broker = "postgres"
    errors = (psycopg.Error, OSError, ProbeFailed, TimeoutError, PoolTimeout)
    _log = log
    _what = "listener"
    _bus = "PostgreSQL"
    _subscribe = "LISTEN"
    _item = "notification"

    def __init__(
        self,
        dsn: str,
        sink: BusSink,
        *,
        application_name: str = APPLICATION_NAME,
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
        self.dsn = dsn
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.probe_channel = f"sserelay.probe.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        #: Name LISTENed -> (channel, durable): both names of every live channel.
        self._names: dict[str, tuple[str, bool]] = {}
        #: Notifications that were not valid text in the connection's encoding.
        self.undecodable = 0
        self._encoding = "utf-8"

    # -- the connection task ---------------------------------------------------------

    async def _session(self) -> None:
        try:
            conn = await self._connect()
        except TimeoutError:
            raise ProbeFailed(
                f"PostgreSQL did not accept a connection within {self.connect_timeout:g}s"
            ) from None
        self._conn = conn
        # The database's own encoding (no conversion, which a SQL_ASCII database could not do
        # for bytes that are not valid UTF-8: the server would drop the connection). Such a
        # database stores any bytes, so they are read as UTF-8, leniently (_text).
        encoding = conn.info.encoding
        self._encoding = "utf-8" if encoding in ("ascii", "sql_ascii") else encoding
        # psycopg would decode notifications strictly, inside its own code: take them raw.
        conn.pgconn.notify_handler = self._on_pgnotify
        await self._bounded(conn, sql.SQL("LISTEN {}").format(sql.Identifier(self.probe_channel)))
        self._active.clear()
        self._names.clear()
        self._connected()
        await self._serve(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        async with asyncio.timeout(self.connect_timeout + 1):  # not wait_for: see _idle
            return await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name=self.application_name,
                connect_timeout=max(1, int(self.connect_timeout)),
                **KEEPALIVE_PARAMS,
            )

    async def _bounded(self, conn: psycopg.AsyncConnection[Any], statement: Any) -> None:
        """Run ``statement``; a server that does not answer in time is a hung connection."""
        try:
            async with asyncio.timeout(self.probe_timeout):  # not wait_for: see Listener._idle
                await conn.execute(statement)
        except TimeoutError:
            raise ProbeFailed(
                f"PostgreSQL did not answer a command within {self.probe_timeout:g}s "
                "(the connection is hung or the server overloaded)"
            ) from None

    def _parse(self, payload: str) -> Notified | None:
        return parse_notification(payload)

    async def _step(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._read(conn)
        await self._sync(conn)

    async def _idle(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
        # psycopg's own waits take over (and then remove) the fd's reader while a
        # command runs, so the reader is armed afresh for every idle wait.
        loop = asyncio.get_running_loop()
        fd = conn.pgconn.socket
        loop.add_reader(fd, self._wake.set)
        try:
            await super()._idle(conn, timeout)
        finally:
            loop.remove_reader(fd)

    def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take whatever the server sent and deliver its notifications."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("connection to PostgreSQL lost")
        while (n := pgconn.notifies()) is not None:
            self._on_pgnotify(n)

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError:
            self.undecodable += 1
            return raw.decode(self._encoding, errors="replace")

    def _on_pgnotify(self, notify: psycopg.pq.PGnotify) -> None:
        """One notification, as libpq gives it (bytes), whoever read it."""
        name = self._text(notify.relname)
        payload = self._text(notify.extra)
        if name == self.probe_channel:
            self._probe_answered(payload)
            return
        found = self._names.get(name)
        if found is not None:
            self._hand_over(found[0], payload, found[1])

    async def _sync(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN what is wanted and UNLISTEN what is not, in batches."""
        for add, drop in self._changes(_BATCH):
            statements = []
            for verb, channels in (("LISTEN", add), ("UNLISTEN", drop)):
                for channel in channels:
                    for name in (channel, durable_channel(channel)):
                        statements.append(sql.SQL(verb + " {}").format(sql.Identifier(name)))
            # Not live from the moment the UNLISTEN is sent: a subscriber arriving while it
            # is in flight must wait for the LISTEN that follows, not be told it is live.
            self._active.difference_update(drop)
            for channel in drop:
                self._names.pop(channel, None)
                self._names.pop(durable_channel(channel), None)
            await self._bounded(conn, sql.SQL("; ").join(statements))
            for channel in add:
                self._names[channel] = (channel, False)
                self._names[durable_channel(channel)] = (channel, True)
            self._active.update(add)
            if add:
                self._sink.on_listening([c for c in add if c in self._wanted])

    async def _send_probe(self, conn: psycopg.AsyncConnection[Any], payload: str) -> None:
        try:
            async with asyncio.timeout(self.probe_timeout):  # not wait_for: see Listener._idle
                await conn.execute("SELECT pg_notify(%s, %s)", (self.probe_channel, payload))
        except TimeoutError:
            raise ProbeFailed(
                f"PostgreSQL did not answer the liveness probe within {self.probe_timeout:g}s "
                "(the connection is hung or the server overloaded)"
            ) from None

    async def _close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.close()
