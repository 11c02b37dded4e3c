"""Writing captured events into the durable log, exactly once.

Events go in through the SQL function ``sserelay.capture_write``, which logs and notifies
a batch exactly as ``sserelay.publish`` would each event, in order. They go in *log
transactions* on a connection of the writer's own. A log transaction holds the events of
one or more whole source transactions, and ends by moving
``sserelay.capture_state.commit_lsn`` from the value the writer last saw to the last
source transaction's commit LSN: a compare-and-set, so two writers that somehow both ran
could never both log the same transaction (the second finds the row changed, rolls back,
and starts over from what the row says).

Only after that commit does the capturer confirm the slot. A crash before the commit
loses the log transaction and the confirmation both: the server sends the source
transactions again. A crash after the commit but before the confirmation makes the server
send them again too, and the capturer skips every source transaction whose commit LSN is
at or below ``commit_lsn``. Either way each change is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ....errors import BrokerUnavailable
from .. import statements
from .changes import CapturedEvent, missed_event
from .errors import Conflict, NotInstalled, translated
from .lsn import format_lsn, parse_lsn
from .rules import Rule

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
WRITE_SQL = "SELECT sserelay.capture_write(%s::json)"
STATE_SQL = "SELECT slot_name, commit_lsn::text FROM sserelay.capture_state"
ADVANCE_SQL = (
    "SELECT sserelay.capture_advance(%s::pg_lsn, %s::pg_lsn, %s::pg_lsn, %s, %s, %s, %s, %s, %s,"
    " %s)"
)
LOST_SQL = """
UPDATE sserelay.capture_state SET lost_at = now(), lost_reason = %s
WHERE lost_at IS NULL RETURNING slot_name
"""
CHANNELS_SQL = "SELECT channel FROM sserelay.channels WHERE channel ~ %s"
#: A ``missed`` event goes through the log like any durable event.
PUBLISH_SQL = statements.PUBLISH


@dataclass
class Group:
    """The log transaction being built: whole source transactions, in commit order."""

    open: bool = False
    channels: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    datas: list[str] = field(default_factory=list)
    #: Totals of the whole group (``channels`` etc. hold the unsent batch only).
    event_count: int = 0
    #: Source transactions in the group, and those of them with captured changes.
    transactions: int = 0
    captured: int = 0
    skipped: int = 0
    error: str | None = None
    commit_lsn: int = 0
    end_lsn: int = 0
    commit_time: datetime.datetime | None = None
    heartbeat: datetime.datetime | None = None
    started: float = 0.0

    def add(self, event: CapturedEvent) -> None:
        self.channels.append(event.channel)
        self.events.append(event.event)
        self.datas.append(event.data)
        self.event_count += 1

    @property
    def pending(self) -> int:
        return len(self.channels)

    @property
    def has_work(self) -> bool:
        """Something to commit: a source transaction, or a heartbeat to record."""
        return bool(self.transactions or self.heartbeat)

    @property
    def needs_write(self) -> bool:
        """A log transaction to commit (``open``: one was started, if only by a read)."""
        return bool(self.open or self.event_count or self.skipped or self.heartbeat)


class LogWriter:
    """The writer's connection (not in autocommit: one open transaction per group)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        #: ``capture_state.commit_lsn`` as last read or written by us.
        self.commit_lsn = 0
        self.slot = ""
        #: The batch the server is writing while the consumer decodes the next one.
        self._inflight: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, dsn: str, *, application_name: str) -> LogWriter:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=False, application_name=application_name
            )
        except psycopg.Error as exc:
            raise BrokerUnavailable(f"capture: cannot connect the log writer: {exc}") from exc
        return cls(conn)

    async def load_state(self) -> str:
        """Read the slot name and the last logged commit LSN; returns the slot."""
        try:
            with translated("reading capture_state"):
                cursor = await self.conn.execute(STATE_SQL)
                row = await cursor.fetchone()
                await self.conn.rollback()
        except psycopg.errors.UndefinedTable:
            await self.conn.rollback()
            raise NotInstalled("capture is not installed: run `sserelay capture add`") from None
        if row is None:
            raise NotInstalled("capture is not installed: run `sserelay capture add`")
        self.slot = str(row[0])
        self.commit_lsn = parse_lsn(row[1])
        return self.slot

    async def flush(self, group: Group) -> None:
        """Send the group's pending events (opening its transaction if need be). The
        statement runs while the caller goes on: the next flush, or the commit, waits
        for it (one batch in flight at most, so memory stays bounded)."""
        batch = self._batch(group)
        if batch is None:
            return
        await self.settle()
        self._inflight = asyncio.create_task(self._write(batch))

    def _batch(self, group: Group) -> str | None:
        """The group's pending events as ``capture_write``'s JSON (taking them out)."""
        if not group.pending:
            return None
        batch = _dumps(list(zip(group.channels, group.events, group.datas, strict=True)))
        group.open = True
        group.channels, group.events, group.datas = [], [], []
        return batch

    async def _write(self, batch: str) -> None:
        with translated("writing events"):
            await self.conn.execute(WRITE_SQL, (batch,))

    async def settle(self) -> None:
        """Wait for the batch in flight; raise what it raised."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def commit(self, group: Group, heartbeat_interval: float | None) -> None:
        """Write what is left, move ``commit_lsn`` and commit, in one round trip;
        :class:`Conflict` if another writer moved it first (then nothing of the group
        is logged)."""
        batch = self._batch(group)
        await self.settle()
        params = (
            format_lsn(self.commit_lsn),
            format_lsn(group.commit_lsn or self.commit_lsn),
            format_lsn(group.end_lsn) if group.end_lsn else None,
            group.commit_time,
            group.captured,
            group.event_count,
            group.skipped,
            group.error,
            group.heartbeat,
            heartbeat_interval,
        )
        with translated("committing events"):
            try:
                async with self.conn.pipeline():
                    if batch is not None:
                        await self.conn.execute(WRITE_SQL, (batch,))
                    await self.conn.execute(ADVANCE_SQL, params)
                    await self.conn.commit()
            except psycopg.errors.SerializationFailure:
                await self.rollback()
                raise Conflict("capture_state.commit_lsn changed under this capturer") from None
        if group.commit_lsn:
            self.commit_lsn = group.commit_lsn

    async def rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self.conn.rollback()

    async def channels_matching(self, pattern: str) -> list[str]:
        """The channels in the log that match a template's pattern (in the open group)."""
        await self.settle()
        with translated("listing channels"):
            cursor = await self.conn.execute(CHANNELS_SQL, (pattern,))
            return sorted(r[0] for r in await cursor.fetchall())

    async def mark_lost(self, reason: str, rules: Iterable[Rule]) -> list[str] | None:
        """Record that the slot is lost and publish ``missed`` on the captured channels,
        once (None if it was already recorded)."""
        rules = list(rules)
        with translated("recording the lost slot"):
            try:
                cursor = await self.conn.execute(LOST_SQL, (reason,))
                if await cursor.fetchone() is None:
                    await self.conn.rollback()
                    return None
                channels = {r.channel.text for r in rules if r.channel.is_static}
                for rule in rules:
                    if not rule.channel.is_static:
                        channels.update(await self.channels_matching(rule.channel.pattern()))
                for channel in sorted(channels):
                    missed = missed_event(channel, reason)
                    await self.conn.execute(PUBLISH_SQL, (channel, missed.data, missed.event))
                await self.conn.commit()
            except BaseException:
                await self.conn.rollback()
                raise
        return sorted(channels)

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(BaseException):
                await self._inflight
            self._inflight = None
        # closing a broken connection: nothing left to lose
        with contextlib.suppress(Exception):
            await self.conn.close()
