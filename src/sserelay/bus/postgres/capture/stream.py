"""One logical replication session: ``START_REPLICATION`` over a psycopg 3 connection.

psycopg 3 (3.3) has no replication API of its own, but its libpq layer (``psycopg.pq``)
speaks the COPY BOTH sub-protocol replication runs on, and that is all this needs: the
stream's framing (PostgreSQL's "Streaming Replication Protocol") is three small messages:

- server -> client ``XLogData`` (``w``): the position of the data, the server's WAL end,
  its clock, and one ``pgoutput`` message (see :mod:`.pgoutput`);
- server -> client ``Primary keepalive`` (``k``): the WAL end, the clock, and whether it
  wants an answer now (it ends the session after ``wal_sender_timeout`` without one);
- client -> server ``Standby status update`` (``r``): the positions received, flushed and
  applied. The flushed one is what the slot confirms: the server will never send a
  transaction that committed before it again.

We send that position ourselves, only ever as far as the capturer says it has committed.
(psycopg 2's ``LogicalReplicationConnection`` moves it forward by itself on keepalives
when it believes the client is idle, which is not safe for a client that reads ahead of
what it has committed: see docs/capture.md, "Why not psycopg 2".)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from ....errors import BrokerUnavailable, SseRelayError
from .pgoutput import PG_EPOCH, DecodeError

_XLOG_HEADER = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">Qq?")
_STATUS = struct.Struct(">cQQQq?")
#: Microseconds from the Unix epoch to PostgreSQL's.
_EPOCH_OFFSET_US = int(PG_EPOCH.timestamp()) * 1_000_000

#: What a replication slot may be called (PostgreSQL's own rule).
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


class StreamError(BrokerUnavailable):
    """The replication session failed or the server ended it; ``sqlstate`` if it said why."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SlotMissing(StreamError):
    """The replication slot does not exist (dropped, or never created)."""


class SlotInvalidated(StreamError):
    """The slot lost WAL it needed (``max_slot_wal_keep_size``): it can give nothing more."""


class SlotBusy(StreamError):
    """Another session is consuming the slot."""


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: int
    wal_end: int
    send_time: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    send_time: int
    reply: bool


def parse_copy_data(buf: bytes) -> XLogData | Keepalive:
    """One CopyData message of the replication stream."""
    kind = buf[:1]
    if kind == b"w":
        if len(buf) < 1 + _XLOG_HEADER.size:
            raise DecodeError(f"replication: XLogData of {len(buf)} bytes is truncated")
        start, end, sent = _XLOG_HEADER.unpack_from(buf, 1)
        return XLogData(start, end, sent, buf[1 + _XLOG_HEADER.size :])
    if kind == b"k":
        if len(buf) != 1 + _KEEPALIVE.size:
            raise DecodeError(f"replication: keepalive of {len(buf)} bytes, not 18")
        end, sent, reply = _KEEPALIVE.unpack_from(buf, 1)
        return Keepalive(end, sent, reply)
    raise DecodeError(f"replication: unknown message type {kind!r}")


def pg_clock() -> int:
    """Now, as PostgreSQL's protocol counts it: microseconds since 2000-01-01 UTC."""
    return time.time_ns() // 1000 - _EPOCH_OFFSET_US


def status_update(received: int, flushed: int, *, reply: bool = False) -> bytes:
    """A ``Standby status update``: ``flushed`` is the position the slot may confirm."""
    return _STATUS.pack(b"r", received, flushed, flushed, pg_clock(), reply)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def start_command(slot: str, publications: Sequence[str], start_lsn: int = 0) -> bytes:
    """``START_REPLICATION`` for ``pgoutput`` protocol version 1, with messages on."""
    if not SLOT_NAME.fullmatch(slot):
        raise SseRelayError(f"{slot!r} is not a replication slot name ([a-z0-9_], 1-63)")
    names = ",".join(_quote(p) for p in publications).replace("'", "''")
    position = f"{start_lsn >> 32:X}/{start_lsn & 0xFFFFFFFF:X}"
    return (
        f"START_REPLICATION SLOT {slot} LOGICAL {position} "
        f"(\"proto_version\" '1', \"publication_names\" '{names}', \"messages\" 'true')"
    ).encode()


def _classify(message: str, sqlstate: str | None) -> StreamError:
    if sqlstate == "42704" or "does not exist" in message:
        return SlotMissing(message, sqlstate)
    if "can no longer get changes" in message or "has been invalidated" in message:
        return SlotInvalidated(message, sqlstate)
    if sqlstate == "55006" or "is active for PID" in message:
        return SlotBusy(message, sqlstate)
    return StreamError(message, sqlstate)


class ReplicationStream:
    """One replication session. ``await ReplicationStream.open(...)``, then :meth:`read`,
    :meth:`read_nowait`, :meth:`send_status`, and :meth:`close`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self._fd = self._pg.socket
        self._loop = asyncio.get_running_loop()
        #: The highest WAL position the server said it has sent (XLogData or keepalive).
        self.wal_end = 0

    @classmethod
    async def open(
        cls,
        dsn: str,
        slot: str,
        publications: Sequence[str],
        *,
        start_lsn: int = 0,
        application_name: str = "sserelay-capture",
        timeout: float = 30.0,
    ) -> ReplicationStream:
        """Connect in replication mode and start streaming from the slot."""
        command = start_command(slot, publications, start_lsn)
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn,
                replication="database",
                autocommit=True,
                application_name=application_name,
                client_encoding="UTF8",
                # Values come as their types' text output: make it the same everywhere.
                options="-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=iso_8601",
                connect_timeout=max(1, int(timeout)),
            )
        except psycopg.Error as exc:
            raise StreamError(f"cannot open a replication connection: {exc}") from exc
        stream = cls(conn)
        try:
            async with asyncio.timeout(timeout):
                await stream._start(command)
        except BaseException:
            await stream.close()
            raise
        return stream

    async def _start(self, command: bytes) -> None:
        pg = self._pg
        pg.nonblocking = 1
        try:
            pg.send_query(command)
            await self._flush()
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                await self._wait(readable=True)
        except psycopg.Error as exc:
            raise StreamError(f"START_REPLICATION failed: {exc}") from exc
        result = pg.get_result()
        if result is None:
            raise StreamError("START_REPLICATION: no answer")
        if result.status != pq.ExecStatus.COPY_BOTH:
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
            state = sqlstate.decode() if sqlstate else None
            raise _classify(message or f"START_REPLICATION: {result.status!r}", state)

    async def _wait(self, *, readable: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        if readable:
            self._loop.add_reader(self._fd, ready)
        else:
            self._loop.add_writer(self._fd, ready)
        try:
            await future
        finally:
            if readable:
                self._loop.remove_reader(self._fd)
            else:
                self._loop.remove_writer(self._fd)

    async def _flush(self) -> None:
        while self._pg.flush():
            await self._wait(readable=False)

    def _take(self) -> XLogData | Keepalive | None:
        """A message libpq has buffered, or None. Raises when the session is over."""
        try:
            size, data = self._pg.get_copy_data(1)
        except psycopg.Error as exc:
            raise StreamError(f"replication stream failed: {exc}") from exc
        if size == 0:
            return None
        if size == -1:  # the server ended the COPY: its result says why
            raise self._ended()
        message = parse_copy_data(bytes(data))
        if message.wal_end > self.wal_end:
            self.wal_end = message.wal_end
        return message

    def _ended(self) -> StreamError:
        result = self._pg.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
            return _classify(message, sqlstate.decode() if sqlstate else None)
        return StreamError("the server ended the replication stream")

    def read_nowait(self) -> XLogData | Keepalive | None:
        """The next message if one can be had without waiting, else None.

        Reads from the socket only when libpq holds no complete message, so a fast
        server cannot grow libpq's buffer faster than we take messages from it.
        """
        message = self._take()
        if message is not None:
            return message
        try:
            self._pg.consume_input()
        except psycopg.Error as exc:
            raise StreamError(f"replication stream failed: {exc}") from exc
        return self._take()

    async def read(self, timeout: float) -> XLogData | Keepalive | None:
        """The next message, waiting up to ``timeout`` seconds (then None)."""
        message = self.read_nowait()
        if message is not None:
            return message
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while message is None:
                    await self._wait(readable=True)
                    message = self.read_nowait()
        return message

    async def send_status(self, flushed: int, *, reply: bool = False) -> None:
        """Tell the server what we received and what it may forget (``flushed``)."""
        try:
            if self._pg.put_copy_data(status_update(self.wal_end, flushed, reply=reply)) != 1:
                await self._wait(readable=False)
                self._pg.put_copy_data(status_update(self.wal_end, flushed, reply=reply))
            await self._flush()
        except psycopg.Error as exc:
            raise StreamError(f"replication stream failed: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._conn.close()

    @property
    def backend_pid(self) -> int:
        return int(self._pg.backend_pid)
