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
import logging
import os
import uuid
from typing import Any

import psycopg
from psycopg import sql

from ...core.protocols import OnListening, OnMessage
from ..listener import Listener, ProbeFailed

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


class PostgresListener(Listener[psycopg.AsyncConnection[Any]]):
    """The :class:`~sserelay.broker.Broker` for PostgreSQL LISTEN/NOTIFY."""

    broker = "postgres"
    errors = (psycopg.Error, OSError, ProbeFailed, TimeoutError)
    _log = log
    _what = "listener"
    _bus = "PostgreSQL"
    _subscribe = "LISTEN"
    _item = "notification"

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
        super().__init__(
            on_message,
            on_listening,
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )
        self.dsn = dsn
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.probe_channel = f"sserelay.probe.{os.getpid()}.{uuid.uuid4().hex[:12]}"

    # -- the connection task ---------------------------------------------------------

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
        self._connected()
        await self._serve(conn)

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
            self._deliver(n.relname.decode(), n.extra.decode(errors="replace"))

    def _on_notify(self, notify: psycopg.Notify) -> None:
        """Notifications psycopg read while one of our commands was running."""
        self._deliver(notify.channel, notify.payload)

    def _deliver(self, channel: str, payload: str) -> None:
        if channel == self.probe_channel:
            self._probe_answered(payload)
        else:
            self._hand_over(channel, payload)

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

    async def _send_probe(self, conn: psycopg.AsyncConnection[Any], payload: str) -> None:
        async with asyncio.timeout(self.probe_timeout):  # not wait_for: see Listener._idle
            await conn.execute("SELECT pg_notify(%s, %s)", (self.probe_channel, payload))

    async def _close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.close()
