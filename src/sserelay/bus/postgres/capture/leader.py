"""Who consumes the slot: the relay holding a session advisory lock, on a connection of
its own (the *lock connection*). Every relay with capture on keeps one; the others try
the lock every ``standby_interval`` seconds and take over when its holder's session
ends (a killed process, a lost connection: PostgreSQL releases the lock with it).

The same connection serves as the leader's liveness probe and heartbeat
(``pg_logical_emit_message``): if it fails, the leader stops consuming at once, since
it may no longer hold the lock.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from ....errors import BrokerUnavailable
from .consumer import HEARTBEAT_PREFIX
from .errors import translated
from .slot import CAPTURE_LOCK_KEY
from .status import SlotStatus, aread_status

HEARTBEAT_SQL = (
    "SELECT pg_catalog.pg_logical_emit_message(true, %s,"
    " extract(epoch FROM clock_timestamp())::text)"
)


class LockConnection:
    """The lock connection: take the lock, emit heartbeats, read the status."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.held = False

    @classmethod
    async def connect(cls, dsn: str, *, application_name: str, timeout: float) -> LockConnection:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn,
                autocommit=True,
                application_name=application_name,
                connect_timeout=max(1, int(timeout)),
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise BrokerUnavailable(f"capture: cannot connect: {exc}") from exc
        return cls(conn)

    async def try_acquire(self) -> bool:
        with translated("taking the capture lock"):
            cursor = await self.conn.execute("SELECT pg_try_advisory_lock(%s)", (CAPTURE_LOCK_KEY,))
            row = await cursor.fetchone()
        self.held = bool(row and row[0])
        return self.held

    async def heartbeat(self) -> None:
        with translated("emitting a heartbeat"):
            await self.conn.execute(HEARTBEAT_SQL, (HEARTBEAT_PREFIX,))

    async def status(self) -> SlotStatus | None:
        with translated("reading the capture status"):
            return await aread_status(self.conn)

    async def terminate(self, pid: int) -> None:
        with translated("ending the session on the slot"):
            await self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    async def slot_pid(self, slot: str) -> int | None:
        with translated("reading the slot"):
            cursor = await self.conn.execute(
                "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def close(self) -> None:
        # closing a broken connection: nothing left to release
        with contextlib.suppress(Exception):
            await self.conn.close()  # ends the session: the lock goes with it
