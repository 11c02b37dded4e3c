"""Durable channels, relay side: in-order live delivery, gap filling and catch-up.

The log (``sserelay.events``) gives every event of a channel an id 1, 2, 3, ... in
commit order, and ``sserelay.publish`` notifies ``{"seq": id, ...}`` in the same
transaction. For every durable channel with subscribers, the relay keeps the id
of the last event it delivered live (its *position*):

- a notification with ``seq == position + 1`` is delivered at once;
- ``seq <= position`` is a duplicate and dropped;
- a gap (``seq > position + 1``, e.g. after the listener reconnected) or a
  ``large`` notification (body too big for NOTIFY) makes the relay read the log
  from its position; notifications arriving meanwhile wait in order behind it.

A channel's position starts at the log's head, read right after its LISTEN took
effect, so nothing committed after that can be missed. After the listener
reconnects every live channel is filled from its position.

A stream that comes with ``Last-Event-ID`` (or ``?lastEventId=``, ``?history=N``)
*catches up* before it joins the live fan-out: it is written the log from its
position up to the live position, then whatever arrived live meanwhile, and
then joins the live set, all in one step with no ``await`` between, so there is
no gap and no duplicate at the seam. Catch-up reads are batched per channel and
position and shared: a thousand clients reconnecting at the same id cost one query
per batch. At most ``max_replay`` events are replayed per channel; a client further
behind (or behind retention) first gets a ``missed`` event. ``?history=N`` asks for
*up to* N events: it gets those that are left, without ``missed``.

The same logic serves Redis (``sserelay.redis_log``): there a position is a stream entry
id ``ms-seq`` (as the integer ``ms << 64 | seq``), and "the next event" is the one whose
notification names the relay's position as its predecessor (``prev``) rather than
``position + 1``. The log (:class:`~sserelay.broker.EventLog`) says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg_pool import AsyncConnectionPool

from .. import jitter
from ..bus.postgres import durable
from ..bus.postgres.durable import LogEvent
from ..wire.envelope import Event

if TYPE_CHECKING:
    from .hub import Hub, Subscriber
    from .protocols import EventLog, LogRow

log = logging.getLogger("sserelay.replay")

#: The event a client gets when events it asked for are gone (retention) or too many.
MISSED_EVENT = "missed"
#: Largest id we accept in a Last-Event-ID (PostgreSQL bigint).
MAX_ID = 2**63 - 1
#: Largest part of a Redis stream entry id ``ms-seq`` (unsigned 64 bits each).
MAX_PART = 2**64 - 1

T = TypeVar("T")


class SharedReads:
    """Identical reads in flight are run once: a reconnect wave costs one read per batch."""

    def __init__(self) -> None:
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        #: Reads sent, and reads answered by one already in flight.
        self.queries = 0
        self.shared = 0

    async def _shared(self, key: tuple[Any, ...], run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run`` once for every concurrent caller with the same ``key``."""
        future = self._inflight.get(key)
        if future is not None:
            self.shared += 1
            result: T = await asyncio.shield(future)
            return result
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.queries += 1
            value = await run()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters (if any) get it too
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]


class IntegerIds:
    """PostgreSQL's positions: ids 1, 2, 3, ... with no gap, so arithmetic answers what
    Redis has to read (``oldest`` is the one read it needs)."""

    async def oldest(self, channel: str) -> int | None:
        raise NotImplementedError

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        # Ids are contiguous: events after `after` are gone iff the oldest left is further.
        oldest = await self.oldest(channel)
        if oldest is None or oldest > after + 1:
            return live if oldest is None else oldest - 1
        return None

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        return max(live - n, floor)

    def previous(self, row: LogRow) -> int:
        return row.id - 1

    def notified(self, obj: dict[str, Any]) -> tuple[int, int] | None:
        seq = obj.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            return None
        return seq, seq - 1

    def format_id(self, position: int) -> str:
        return str(position)


class LogReader(IntegerIds, SharedReads):
    """Reads the PostgreSQL event log for one relay: a small pool, shared and bounded reads.

    The :class:`~sserelay.broker.EventLog` for PostgreSQL: positions are the log's ids.
    """

    def __init__(self, dsn: str, *, batch: int = 500, max_connections: int = 4) -> None:
        super().__init__()
        self.batch = batch
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=0,
            max_size=max_connections,
            max_idle=60,
            # After an outage the pool may hold dead connections: test each one lent out.
            check=AsyncConnectionPool.check_connection,
            open=False,
            kwargs={"autocommit": True, "application_name": "sserelay-reader"},
            name="sserelay-reader",
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=2)

    async def _query(self, call: Callable[[Any], Awaitable[T]]) -> T:
        async with self.pool.connection(timeout=10) as conn:
            return await call(conn)

    async def installed(self) -> bool:
        async def ask(conn: Any) -> bool:
            return await durable.adurable_available(conn)

        return await self._shared(("installed",), lambda: self._query(ask))

    async def head(self, channel: str) -> int:
        async def ask(conn: Any) -> int:
            return await durable.last_id(conn, channel) or 0

        return await self._shared(("head", channel), lambda: self._query(ask))

    async def oldest(self, channel: str) -> int | None:
        async def ask(conn: Any) -> int | None:
            return await durable.oldest_id(conn, channel)

        return await self._shared(("oldest", channel), lambda: self._query(ask))

    async def prune(self, max_age: datetime.timedelta | None, max_count: int | None) -> int:
        async def run(conn: Any) -> int:
            cursor = await conn.execute(durable.PRUNE_SQL, (max_age, max_count))
            row = await cursor.fetchone()
            return int(row[0]) if row is not None and row[0] is not None else 0

        return await self._query(run)

    async def read_after(self, channel: str, after: int, *, shared: bool = True) -> list[LogEvent]:
        """Up to ``batch`` events after ``after``; ``shared=False`` for a read that must start
        now (not join one in flight, whose snapshot may be older)."""

        async def ask(conn: Any) -> list[LogEvent]:
            return await durable.read_after(conn, channel, after, self.batch)

        if not shared:
            self.queries += 1
            return await self._query(ask)
        return await self._shared(("after", channel, after), lambda: self._query(ask))

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        timeout: float = 5.0,
    ) -> int | str | None:
        """:func:`sserelay.apublish` on a connection from the pool (``POST /publish``)."""
        from ..bus.publish import apublish

        async with self.pool.connection(timeout=timeout) as conn:
            return await apublish(conn, channel, data, event=event, id=id)


@dataclass
class ChannelState:
    """What the relay knows of one durable channel with subscribers."""

    #: Id of the last event delivered live; None until the head was read.
    position: int | None = None
    #: Notifications waiting behind a head read or a fill: (seq, prev, payload object).
    queue: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    filling: bool = False
    #: A fill was asked for while one ran (LISTEN took effect again): it must read once more.
    again: bool = False
    known: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class CatchUp:
    """A stream's request to start from a position rather than from now."""

    #: Channel -> the last id the client saw (None: from ``history`` or now).
    positions: dict[str, int] | None = None
    history: int | None = None


def parse_last_event_id(raw: str | None, channels: tuple[str, ...]) -> dict[str, int] | None:
    """Per-channel positions from a ``Last-Event-ID``; None if absent; ValueError if malformed.

    One channel: the id itself (``42``, or a Redis stream entry id ``1718000000000-3``).
    Several: positions in the order of the sorted channel names, joined with ``.``
    (``42.0.17``), as :func:`composite_id` writes them.
    """
    if raw is None or raw == "":
        return None
    parts = raw.split(".")
    ordered = sorted(channels)
    if len(parts) != len(ordered):
        raise ValueError(f"expected {len(ordered)} position(s), got {len(parts)}")
    positions = {}
    for channel, part in zip(ordered, parts, strict=True):
        positions[channel] = parse_position(part)
    return positions


def parse_position(part: str) -> int:
    """A position from its text: ``42`` (PostgreSQL) or ``ms-seq`` (a Redis stream entry id,
    as ``ms << 64 | seq``); ValueError if it is neither."""
    ms, dash, seq = part.partition("-")
    if dash:
        if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
            raise ValueError(f"position {part[:40]!r} is not a stream entry id ms-seq")
        high, low = int(ms), int(seq)
        if high > MAX_PART or low > MAX_PART:
            raise ValueError("position out of range")
        return high << 64 | low
    if not part.isascii() or not part.isdigit():
        raise ValueError(f"position {part[:40]!r} is not a non-negative integer")
    value = int(part)
    if value > MAX_ID:
        raise ValueError("position out of range")
    return value


def catch_up_request(
    channels: tuple[str, ...], query: Iterable[tuple[str, str]], header: str | None
) -> CatchUp | None:
    """What a stream asks to replay: ``Last-Event-ID`` (header, else ``?lastEventId=``)
    or ``?history=N``. A malformed id is logged and ignored (the stream starts from
    now): EventSource gives up for good on any non-200 answer, so it is never a 4xx.
    A malformed ``history`` is the page author's mistake and raises ``ValueError``.
    """
    params = dict(query)
    raw = header if header is not None else params.get("lastEventId")
    try:
        positions = parse_last_event_id(raw, channels)
    except ValueError as exc:
        log.info(
            "ignoring Last-Event-ID %r for %s: %s; starting from now",
            (raw or "")[:80],
            ",".join(channels),
            exc,
        )
        positions = None
    if positions is not None:
        return CatchUp(positions=positions)
    history = params.get("history")
    if history is None or history == "":
        return None
    if not history.isascii() or not history.isdigit() or len(history) > 9:
        raise ValueError(f"history must be a non-negative integer, not {history[:40]!r}")
    return CatchUp(history=int(history))


def composite_id(positions: Iterable[int]) -> str:
    return ".".join(str(p) for p in positions)


def missed_event(channel: str, after: int | str, resumed_at: int | str, reason: str) -> Event:
    data = json.dumps(
        {"channel": channel, "after": after, "resumed_at": resumed_at, "reason": reason}
    )
    return Event(channel, data, event=MISSED_EVENT)


class Replay:
    """The durable-channel logic of one hub (see the module docstring)."""

    def __init__(self, hub: Hub, reader: EventLog, *, max_replay: int = 10_000) -> None:
        self.hub = hub
        self.reader = reader
        self.max_replay = max_replay
        self.states: dict[str, ChannelState] = {}
        self.enabled: bool | None = None  # None until we know whether the schema is installed
        self._tasks: set[asyncio.Task[None]] = set()
        self.replayed = 0
        self.filled = 0

    # -- channel lifecycle -------------------------------------------------------------

    def track(self, channel: str) -> None:
        """The channel got its first subscriber (its position comes once it is LISTENed)."""
        self.states.setdefault(channel, ChannelState())

    def forget(self, channel: str) -> None:
        """The channel lost its last subscriber."""
        self.states.pop(channel, None)

    def positions(self, channel: str) -> int:
        """The live position of ``channel`` (0 if unknown)."""
        state = self.states.get(channel)
        return (state.position or 0) if state is not None else 0

    def format_id(self, position: int) -> str:
        """The SSE ``id:`` text of a position (its log's spelling)."""
        return self.reader.format_id(position)

    def is_ready(self, channel: str) -> bool:
        if self.enabled is False:
            return True
        state = self.states.get(channel)
        return state is not None and state.position is not None

    def on_listening(self, channels: Iterable[str]) -> None:
        """LISTEN took effect (first time, or again after a reconnect): read or fill."""
        for channel in channels:
            state = self.states.setdefault(channel, ChannelState())
            self._spawn(self._fill(channel, state), f"sserelay-fill-{channel}")

    # -- live notifications ----------------------------------------------------------

    def on_notification(self, channel: str, payload: str) -> bool:
        """Handle a durable notification; False if ``payload`` is not one (deliver as raw)."""
        if self.enabled is False:
            return False  # no log here: a {"seq": ...} payload is just data
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        found = self.reader.notified(obj) if isinstance(obj, dict) else None
        if found is None:
            return False
        seq, prev = found
        state = self.states.get(channel)
        if state is None:
            return True  # nobody listens any more
        if state.position is None or state.filling:
            state.queue.append((seq, prev, obj))
            return True
        if not self._advance(channel, state, seq, prev, obj):
            state.queue.append((seq, prev, obj))
            self._spawn(self._fill(channel, state), f"sserelay-fill-{channel}")
        return True

    def _advance(
        self, channel: str, state: ChannelState, seq: int, prev: int, obj: dict[str, Any]
    ) -> bool:
        """Deliver ``seq`` if it is next (``prev`` is the position); True if handled
        (delivered or duplicate)."""
        assert state.position is not None
        if seq <= state.position:
            return True
        if prev != state.position or obj.get("large") or not isinstance(obj.get("data"), str):
            return False
        event = obj.get("event")
        state.position = seq
        self.hub.publish_event(
            Event(
                channel,
                obj["data"],
                event=event if isinstance(event, str) else None,
                id=self.reader.format_id(seq),
                seq=seq,
            )
        )
        return True

    def _event(self, channel: str, row: LogRow) -> Event:
        return Event(
            channel, row.data, event=row.event, id=self.reader.format_id(row.id), seq=row.id
        )

    def _deliver_row(self, channel: str, state: ChannelState, row: LogRow) -> None:
        state.position = row.id
        self.filled += 1
        self.hub.publish_event(self._event(channel, row))

    async def _fill(self, channel: str, state: ChannelState) -> None:
        """Bring ``channel`` up to date from the log, then drain the waiting notifications."""
        if state.filling:
            # Its read may predate a LISTEN that just took effect again: events committed
            # in between were notified to nobody, so it reads once more before it ends.
            state.again = True
            return
        state.filling = True
        try:
            if self.enabled is None:
                self.enabled = await self._retry(self.reader.installed, channel, state)
            if not self.enabled:
                state.position = 0
                state.queue.clear()
                return
            if state.position is None:
                state.position = await self._retry(
                    lambda: self.reader.head(channel), channel, state
                )
            while self.states.get(channel) is state:
                state.again = False
                # Not shared: a read in flight for a catch-up may predate the LISTEN.
                rows = await self._retry(
                    lambda: self.reader.read_after(channel, state.position or 0, shared=False),
                    channel,
                    state,
                )
                if self.states.get(channel) is not state:
                    return
                for row in rows:
                    if row.id > (state.position or 0):
                        self._deliver_row(channel, state, row)
                if len(rows) >= self.reader.batch:
                    continue  # more to read
                if self._drain(channel, state):
                    if state.again:
                        continue
                    return
                if not rows and not await self._retry(
                    lambda: self.reader.read_after(channel, state.position or 0, shared=False),
                    channel,
                    state,
                ):
                    self._skip_gap(channel, state)
        except _Gone:
            return
        finally:
            state.filling = False
            if state.position is not None:
                state.known.set()
                # Every time, not only the first: after a reconnect, streams that opened
                # while the channel was not LISTENed are still waiting for their ": ready".
                if self.hub.is_live(channel):
                    self.hub.channels_live([channel])

    def _drain(self, channel: str, state: ChannelState) -> bool:
        """Deliver queued notifications in order; False if a gap remains (read again)."""
        queue = sorted(state.queue, key=lambda item: item[0])
        state.queue = []
        for index, (seq, prev, obj) in enumerate(queue):
            if not self._advance(channel, state, seq, prev, obj):
                state.queue = queue[index:]
                return False
        return True

    def _skip_gap(self, channel: str, state: ChannelState) -> None:
        """A notification waits beyond the position, but a read that began after it arrived
        found nothing there: the events were pruned, or the payload only looks durable (a
        raw NOTIFY of ``{"seq":...}``). Skip to it, delivering it if it carries its data,
        rather than read the log again and again for ever."""
        position = state.position or 0
        waiting = [item for item in state.queue if item[0] > position]
        if not waiting:
            return
        seq, prev, obj = min(waiting, key=lambda item: item[0])
        log.warning(
            "%r: the log has nothing after %s, yet seq %s came; skipping to it",
            channel,
            self.reader.format_id(position),
            self.reader.format_id(seq),
        )
        state.position = prev
        if not self._advance(channel, state, seq, prev, obj):
            state.position = seq  # its body was only in the log, and is gone too

    async def _retry(
        self, call: Callable[[], Awaitable[T]], channel: str, state: ChannelState
    ) -> T:
        """Keep trying a read while the channel still has subscribers (jittered backoff)."""
        delay = 0.1
        while True:
            try:
                return await call()
            except Exception as exc:  # the database is down or restarting: keep trying
                if self.states.get(channel) is not state:
                    raise _Gone from exc
                log.warning("reading the log of %r failed (%s); retrying", channel, exc)
                await asyncio.sleep(delay * jitter.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    # -- catch-up of one stream ------------------------------------------------------

    def start_catch_up(self, sub: Subscriber, request: CatchUp) -> None:
        self._spawn(self._catch_up(sub, request), "sserelay-catch-up")

    async def _catch_up(self, sub: Subscriber, request: CatchUp) -> None:
        hub = self.hub
        try:
            for channel in sub.channels:
                state = self.states.get(channel)
                if state is None:
                    return  # the stream is gone
                await state.known.wait()
            if not self.enabled:
                hub.finish_catch_up(sub, {})
                return
            # The stream's own positions: where it starts, advanced as rows are written.
            vector = {
                channel: await self._start_position(channel, self.states[channel], request)
                for channel in sorted(sub.channels)
            }
            for channel in vector:
                state = self.states.get(channel)
                if state is None or not hub.is_catching_up(sub):
                    return
                # ?history=N asks for *up to* N events, so it never gets `missed`.
                report = request.positions is not None
                if not await self._replay_channel(sub, channel, state, vector, report):
                    return  # dropped as slow, or gone
            hub.finish_catch_up(sub, vector)
        except _Gone:
            return

    async def _start_position(self, channel: str, state: ChannelState, request: CatchUp) -> int:
        live = state.position or 0
        if request.positions is not None:
            start = request.positions[channel]
            if start > live:
                log.info(
                    "Last-Event-ID position %s on %r is ahead of the log (%s): from now",
                    self.reader.format_id(start),
                    channel,
                    self.reader.format_id(live),
                )
                return live
            return start
        if request.history is not None:
            history = request.history
            if history == 0 or live == 0:
                return live
            return await self._retry(
                lambda: self.reader.back(channel, live, history, 0), channel, state
            )
        return live

    async def _replay_channel(
        self,
        sub: Subscriber,
        channel: str,
        state: ChannelState,
        vector: dict[str, int],
        report: bool = True,
    ) -> bool:
        """Write ``channel``'s log from ``vector[channel]`` up to the live position.

        Events that cannot be replayed (over ``max_replay``, or pruned) are skipped, with a
        ``missed`` event first if ``report``.
        """
        hub = self.hub
        reader = self.reader
        live = state.position or 0
        if vector[channel] < live:
            start = vector[channel]
            resumed = await self._retry(
                lambda: reader.back(channel, live, self.max_replay, start), channel, state
            )
            if resumed > start:
                if report:
                    sub.deliver(self._missed(channel, start, resumed, "too many events"))
                vector[channel] = resumed
        if vector[channel] < live:
            start = vector[channel]
            gone = await self._retry(lambda: reader.gap_after(channel, start, live), channel, state)
            if gone is not None:
                if report:
                    sub.deliver(self._missed(channel, start, gone, "retention"))
                vector[channel] = gone
        while vector[channel] < (state.position or 0):
            rows = await self._retry(
                lambda: self.reader.read_after(channel, vector[channel]), channel, state
            )
            if not hub.is_catching_up(sub) or self.states.get(channel) is not state:
                return False
            live = state.position or 0
            if not rows or reader.previous(rows[0]) > vector[channel]:
                # A prune ran between the retention check and this read: say so.
                resumed = live if not rows else min(reader.previous(rows[0]), live)
                if report:
                    sub.deliver(self._missed(channel, vector[channel], resumed, "retention"))
                vector[channel] = resumed
            for row in rows:
                if row.id > live:
                    break
                vector[channel] = row.id
                self.replayed += 1
                event = self._event(channel, row)
                if not sub.deliver(hub.stamp(event, sub, vector)):
                    hub.drop_slow(sub)
                    return False
        return True

    def _missed(self, channel: str, after: int, resumed_at: int, reason: str) -> Event:
        """The ``missed`` event: positions as the log spells ids (numbers on PostgreSQL,
        entry id strings on Redis)."""

        def spelled(position: int) -> int | str:
            text = self.reader.format_id(position)
            return int(text) if text.isdigit() else text

        return missed_event(channel, spelled(after), spelled(resumed_at), reason)

    # -- task ownership ---------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replay task failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


class _Gone(Exception):
    """The channel or stream a task worked for has no subscribers any more."""
