"""One consuming session: the replication stream in, events to the log, confirmations out.

The consumer reads the stream message by message and never waits on the network with
work in hand: while more messages are ready it keeps adding whole source transactions
to the current *group* (one log transaction, see :mod:`.writer`), up to
``group_events`` events or ``group_delay`` seconds; as soon as nothing more is ready, or
a limit is reached at a transaction's end, it commits the group and confirms the slot
up to the group's last commit. Events go to the database in batches of
``batch_events``, so a source transaction of any size is written in bounded memory
(its log transaction simply stays open until its commit arrives).

Keepalives are answered; when everything received is committed and the server says it
has sent up to some position, that position is confirmed too (so the slot also moves
when only other tables change).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .changes import CapturedEvent, TableCodec, tail, truncate_data
from .lsn import format_lsn
from .options import CaptureOptions
from .pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    Update,
    decode,
)
from .rules import RULES_TABLE, Rule
from .stream import Keepalive, ReplicationStream, XLogData
from .template import RouteError
from .writer import Group, LogWriter

log = logging.getLogger("sserelay.capture")

#: The prefix of the capturer's heartbeat messages (``pg_logical_emit_message``).
HEARTBEAT_PREFIX = "sserelay.capture.heartbeat"


@dataclass
class Counters:
    """What this process's sessions did (for /metrics); the database keeps the totals."""

    transactions: int = 0
    events: int = 0
    rows_skipped: int = 0
    groups: int = 0
    last_commit_lsn: int = 0
    last_commit_time: datetime.datetime | None = None
    last_error: str | None = None
    heartbeat_emitted: datetime.datetime | None = None
    heartbeat_captured: datetime.datetime | None = None


class Consumer:
    """Runs until the stream or the writer fails (or it is cancelled)."""

    def __init__(
        self,
        stream: ReplicationStream,
        writer: LogWriter,
        rules: dict[int, Rule],
        options: CaptureOptions,
        counters: Counters,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.writer = writer
        self.rules = rules
        self.options = options
        self.counters = counters
        self.clock = clock
        self.relations: dict[int, Relation] = {}
        self.codecs: dict[int, TableCodec | None] = {}
        self.control_oid: int | None = None
        self.group = Group()
        #: The source transaction being received, and whether it is logged already.
        self.txn: Begin | None = None
        self.skip = False
        #: Row changes of the current source transaction that were captured (or skipped).
        self.txn_rows = 0
        self.tail = ""
        self.lsn_text = ""
        #: The position confirmed to the server (everything before it is in the log).
        self.confirmed = 0
        self._last_status = 0.0

    async def run(self) -> None:
        while True:
            message = self.stream.read_nowait()
            if message is None:
                if self.txn is None and self.group.has_work:
                    await self._commit_group()
                if self.clock() - self._last_status >= self.options.status_interval:
                    await self._send_status()
                message = await self.stream.read(self.options.status_interval / 2)
                if message is None:
                    continue
            if isinstance(message, Keepalive):
                await self._keepalive(message)
            else:
                await self._data(message)

    async def _send_status(self, *, reply: bool = False) -> None:
        await self.stream.send_status(self.confirmed, reply=reply)
        self._last_status = self.clock()

    async def _keepalive(self, message: Keepalive) -> None:
        if self.txn is None and not self.group.transactions and message.wal_end > self.confirmed:
            # Everything the server sent before this is handled and logged.
            self.confirmed = message.wal_end
        if message.reply:
            await self._send_status()

    async def _data(self, message: XLogData) -> None:
        change = decode(message.payload)
        kind = type(change)
        if kind is Insert or kind is Update or kind is Delete:
            row: Insert | Update | Delete = change  # type: ignore[assignment]  # checked above
            if row.relation_oid == self.control_oid:
                self._rule_change(row)
            elif not self.skip:
                self._row(row)
                if self.group.pending >= self.options.batch_events:
                    await self.writer.flush(self.group)
        elif isinstance(change, Begin):
            self._begin(change)
        elif isinstance(change, Commit):
            await self._commit(change)
        elif isinstance(change, Relation):
            self.relations[change.oid] = change
            self.codecs.pop(change.oid, None)
            if (change.namespace, change.name) == RULES_TABLE:
                self.control_oid = change.oid
        elif isinstance(change, Truncate):
            if not self.skip:
                await self._truncate(change)
        elif isinstance(change, Message):
            self._message(change)
        # Origin and Type need nothing: values are read as text.

    def _begin(self, begin: Begin) -> None:
        self.txn = begin
        self.txn_rows = 0
        self.skip = begin.final_lsn <= self.writer.commit_lsn
        self.lsn_text = format_lsn(begin.final_lsn)
        self.tail = tail(self.lsn_text, begin.commit_time.isoformat())
        if not self.group.has_work:
            self.group.started = self.clock()

    async def _commit(self, commit: Commit) -> None:
        self.txn = None
        if self.skip:
            self.skip = False
            if not self.group.transactions:
                self.confirmed = max(self.confirmed, commit.end_lsn)
            return
        group = self.group
        group.transactions += 1
        group.captured += 1 if self.txn_rows else 0
        group.commit_lsn = commit.commit_lsn
        group.end_lsn = commit.end_lsn
        group.commit_time = commit.commit_time
        if (
            group.event_count >= self.options.group_events
            or self.clock() - group.started >= self.options.group_delay
        ):
            await self._commit_group()

    async def _commit_group(self) -> None:
        group = self.group
        if group.needs_write:
            await self.writer.commit(group, self.options.heartbeat_interval)
        c = self.counters
        c.transactions += group.captured
        c.events += group.event_count
        c.rows_skipped += group.skipped
        c.groups += 1
        if group.commit_lsn:
            c.last_commit_lsn = group.commit_lsn
            c.last_commit_time = group.commit_time
        if group.heartbeat is not None:
            c.heartbeat_emitted = group.heartbeat
            c.heartbeat_captured = datetime.datetime.now(datetime.UTC)
        if group.end_lsn:
            self.confirmed = max(self.confirmed, group.end_lsn)
        self.group = Group()
        await self._send_status()

    def _codec(self, oid: int) -> TableCodec | None:
        if oid in self.codecs:
            return self.codecs[oid]
        rule = self.rules.get(oid)
        relation = self.relations.get(oid)
        codec = TableCodec(relation, rule) if rule is not None and relation is not None else None
        self.codecs[oid] = codec
        return codec

    def _row(self, change: Insert | Update | Delete) -> None:
        codec = self._codec(change.relation_oid)
        if codec is None:
            return  # not (or no longer) captured
        try:
            event: CapturedEvent
            if isinstance(change, Insert):
                if "insert" not in codec.rule.events:
                    return
                event = codec.insert(change, self.tail)
            elif isinstance(change, Update):
                if "update" not in codec.rule.events:
                    return
                event = codec.update(change, self.tail)
            else:
                if "delete" not in codec.rule.events:
                    return
                event = codec.delete(change, self.tail)
        except RouteError as exc:
            self._skipped(codec, exc)
            return
        self.txn_rows += 1
        self.group.add(event)

    def _skipped(self, codec: TableCodec, exc: RouteError) -> None:
        text = (
            f"{codec.relation.qualified_name} change in the transaction at {self.lsn_text} "
            f"not published: channel template {codec.rule.channel.text!r}: {exc}"
        )
        self.group.skipped += 1
        self.txn_rows += 1
        self.group.error = text
        self.counters.last_error = text
        log.warning("capture: %s", text)

    async def _truncate(self, change: Truncate) -> None:
        data = truncate_data(self.lsn_text, self.txn.commit_time.isoformat() if self.txn else "")
        for oid in change.relation_oids:
            codec = self._codec(oid)
            if codec is None or "truncate" not in codec.rule.events:
                continue
            template = codec.rule.channel
            channels: list[str]
            if template.is_static:
                channels = [template.text]
            else:  # every channel of the template that has had events
                await self.writer.flush(self.group)
                channels = await self.writer.channels_matching(template.pattern())
                self.group.open = True
            for channel in channels:
                self.group.add(CapturedEvent(channel, codec.truncate_event, data))
            self.txn_rows += 1

    def _message(self, message: Message) -> None:
        if message.prefix != HEARTBEAT_PREFIX or self.skip:  # skip: recorded already
            return
        try:
            emitted = datetime.datetime.fromtimestamp(float(message.content), datetime.UTC)
        except (ValueError, OverflowError):
            log.warning("capture: ignoring a malformed heartbeat %r", message.content[:40])
            return
        # Written with the group, or alone at the next idle moment.
        if not self.group.has_work:
            self.group.started = self.clock()
        self.group.heartbeat = emitted

    def _rule_change(self, change: Insert | Update | Delete) -> None:
        relation = self.relations.get(change.relation_oid)
        if relation is None:
            return
        names = [c.name for c in relation.columns]
        values = change.old if isinstance(change, Delete) else change.new
        row: dict[str, Any] = dict(zip(names, values, strict=False))
        try:
            relid = int(str(row["relid"]))
            if isinstance(change, Delete):
                self.rules.pop(relid, None)
                log.info("capture: rule for relation %d removed", relid)
            else:
                rule = Rule.from_row(row)
                self.rules[relid] = rule
                log.info("capture: rule for %s -> %s", rule.name, rule.channel.text)
        except Exception as exc:  # a hand-edited row: keep the rules we have
            log.error("capture: ignoring an unreadable capture_rules row %r: %s", row, exc)
            return
        self.codecs.pop(relid, None)
