"""The one owner of what reaches the streams of each channel: live order, gap fill, and the
seam between a stream's catch-up and the live fan-out.

Messages come from the bus listener (:class:`~sserelay.core.protocols.BusSink`):

- a **raw** message (a plain ``NOTIFY`` or ``PUBLISH``) is decoded once
  (:func:`~sserelay.wire.envelope.event_from_notification`) and fanned out;
- a **durable** notification came on the channel's durable name, where only the log's
  publish function sends. For every channel with subscribers the relay keeps the
  position of the last event it delivered live: the next event (``prev`` is the
  position) is delivered at once; an older one is a duplicate and dropped; a gap (the
  listener reconnected, or the event was too large to notify) makes the relay read the
  log from its position, while later notifications wait in order behind the read.
  A position only ever advances to what the log holds: a notification the log does
  not confirm is dropped and counted.

A channel's position starts at the log's head, read (for a whole batch of channels in
one query) right after its subscription took effect, so nothing committed after that
is missed. After the listener reconnects every channel is filled from its position.

Streams that ask to start from an earlier position (``Last-Event-ID``, ``?history=N``)
are members that catch up first (:mod:`sserelay.core.catchup`): meanwhile the live
events of their channels are kept for them (the seam, bounded by ``max_buffer``), and
they join the fan-out in one synchronous step after the last replayed event.

The hub (:mod:`sserelay.core.hub`) only moves bytes; it calls back here through
:class:`~sserelay.core.hub.ChannelOwner`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from ..wire.envelope import Event, event_from_notification
from .channel import ChannelState, Seam, missed_event, row_event
from .hub import Hub
from .protocols import EventLog, Lease, Listener, LogRow, Notified, Subscriber
from .reads import Gone, retry
from .supervisor import Supervisor

log = logging.getLogger("sserelay.delivery")

T = TypeVar("T")


class Delivery:
    """See the module docstring. Owns the process's :class:`~sserelay.core.hub.Hub`."""

    def __init__(
        self,
        tasks: Supervisor,
        *,
        heartbeat: float = 15.0,
        retry_ms: int = 2000,
        max_replay: int = 10_000,
        max_buffer: int = 256 * 1024,
        drain_timeout: float = 10.0,
    ) -> None:
        self.tasks = tasks
        self.hub = Hub(self, heartbeat=heartbeat, retry_ms=retry_ms)
        self.max_replay = max_replay
        #: Bytes a stream may have unsent, in every phase (catch-up and seam included).
        self.max_buffer = max_buffer
        #: Seconds a catching-up stream may take to accept what it was sent.
        self.drain_timeout = drain_timeout
        self.listener: Listener | None = None
        self.log: EventLog | None = None
        self.states: dict[str, ChannelState] = {}
        #: None until we know whether the log is there (the schema is installed).
        self.enabled: bool | None = None
        self._catching: dict[Subscriber, Seam] = {}
        self._catching_on: dict[str, dict[Subscriber, None]] = {}
        # Plain counters, read by the metrics collector at scrape time.
        self.events_received = 0
        self.filled = 0
        self.replayed = 0
        #: Durable notifications the log did not confirm (dropped, never delivered).
        self.unconfirmed = 0

    def attach(self, listener: Listener, event_log: EventLog) -> None:
        self.listener = listener
        self.log = event_log

    # -- the fronts' side ------------------------------------------------------------

    def begin_catch_up(self, sub: Subscriber, lease: Lease | None = None) -> None:
        """Register ``sub`` as a member that catches up before it joins the fan-out: from
        now on the live events of its channels are kept for it (see
        :func:`sserelay.core.catchup.subscribe`)."""
        self._catching[sub] = Seam()
        for channel in sub.channels:
            self._catching_on.setdefault(channel, {})[sub] = None
        self.hub.subscribe(sub, lease, live=False)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.hub.unsubscribe(sub)

    def position(self, channel: str) -> int:
        """The live position of ``channel`` (0 if unknown)."""
        state = self.states.get(channel)
        return (state.position or 0) if state is not None else 0

    # -- hub.ChannelOwner --------------------------------------------------------------

    def first_member(self, channel: str) -> None:
        self.states.setdefault(channel, ChannelState())
        if self.listener is not None:
            self.listener.listen(channel)

    def last_member(self, channel: str) -> None:
        state = self.states.pop(channel, None)
        if state is not None:
            state.known.set()  # wake the catch-ups waiting for it: they find it gone
            for _, waiter in state.waiters:
                waiter.cancel()
        if self.listener is not None:
            self.listener.unlisten(channel)

    def is_live(self, channel: str) -> bool:
        """Subscribed on the bus, and (with a log) the channel's position known."""
        if self.listener is None or not self.listener.is_listening(channel):
            return False
        if self.enabled is False:
            return True
        state = self.states.get(channel)
        return state is not None and state.position is not None

    def composite_id(self, key: tuple[str, ...]) -> str:
        assert self.log is not None
        return ".".join(self.log.format_id(self.position(c)) for c in key)

    def stream_gone(self, sub: Subscriber) -> None:
        if self._catching.pop(sub, None) is not None:
            for channel in sub.channels:
                catching = self._catching_on.get(channel)
                if catching is not None:
                    catching.pop(sub, None)
                    if not catching:
                        del self._catching_on[channel]

    # -- the bus's side (core.protocols.BusSink) --------------------------------------

    def on_message(self, channel: str, payload: str) -> None:
        self.events_received += 1
        if channel in self.states:  # else nobody listens any more
            self.emit(event_from_notification(channel, payload))

    def on_durable(self, channel: str, notified: Notified | None) -> None:
        self.events_received += 1
        state = self.states.get(channel)
        if state is None:
            return  # nobody listens any more
        if notified is None:
            self._refuse(channel, "a durable notification that cannot be read")
            return
        if state.position is None or state.filling:
            state.queue.append(notified)
        elif not self._advance(channel, state, notified):
            state.queue.append(notified)
            self.tasks.spawn(self._fill(channel, state), f"fill:{channel}")

    def on_listening(self, channels: Iterable[str]) -> None:
        """Subscriptions took effect (first time, or again after a reconnect): read the
        log's heads of the whole batch at once, then fill what needs it."""
        batch = [c for c in channels if c in self.states]
        if batch:
            self.tasks.spawn(self._refresh(batch), "refresh")

    # -- live delivery -----------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Fan ``event`` out to the live streams, and keep it for the catching-up ones."""
        self.hub.publish(event)
        catching = self._catching_on.get(event.channel)
        if not catching:
            return
        for sub in list(catching):
            seam = self._catching.get(sub)
            if seam is None:
                continue
            seam.events.append(event)
            seam.size += len(event.frame)
            if seam.size > self.max_buffer:
                self.hub.drop_slow(sub)  # it will catch up from the log when it reconnects

    def _advance(self, channel: str, state: ChannelState, notified: Notified) -> bool:
        """Deliver ``notified`` if it is next; True if handled (delivered or duplicate)."""
        assert state.position is not None and self.log is not None
        if notified.seq <= state.position:
            return True
        if notified.prev != state.position or notified.data is None:
            return False
        self._moved(channel, state, notified.seq)
        self.emit(
            Event(
                channel,
                notified.data,
                event=notified.event,
                id=self.log.format_id(notified.seq),
                seq=notified.seq,
            )
        )
        return True

    def _moved(self, channel: str, state: ChannelState, position: int) -> None:
        state.position = position
        if state.waiters:
            waiting = []
            for target, waiter in state.waiters:
                if target <= position:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    waiting.append((target, waiter))
            state.waiters = waiting

    def row_event(self, channel: str, row: LogRow) -> Event:
        assert self.log is not None
        return row_event(self.log, channel, row)

    def missed_event(self, channel: str, after: int, resumed_at: int, reason: str) -> Event:
        assert self.log is not None
        return missed_event(self.log, channel, after, resumed_at, reason)

    # -- positions and fills ---------------------------------------------------------

    async def _refresh(self, channels: list[str]) -> None:
        assert self.log is not None
        event_log = self.log
        if self.enabled is None:
            self.enabled = await self.retry(event_log.installed, lambda: bool(self._mine(channels)))
        if not self.enabled:
            for channel in self._mine(channels):
                state = self.states[channel]
                state.position = 0
                state.queue.clear()
                self._known(channel, state)
            return
        heads = await self.retry(
            lambda: event_log.heads(self._mine(channels)), lambda: bool(self._mine(channels))
        )
        for channel in self._mine(channels):
            state = self.states[channel]
            if state.filling:
                state.again = True  # its read may predate this subscription
                continue
            head = heads.get(channel, 0)
            if state.position is None:
                self._moved(channel, state, head)
            if head > (state.position or 0) or state.queue:
                self.tasks.spawn(self._fill(channel, state), f"fill:{channel}")
            else:
                self._known(channel, state)

    def _mine(self, channels: Sequence[str]) -> list[str]:
        return [c for c in channels if c in self.states]

    def _known(self, channel: str, state: ChannelState) -> None:
        state.known.set()
        # Every time, not only the first: after a reconnect, streams that opened while
        # the channel was not live are still waiting for their ": ready".
        if self.is_live(channel):
            self.hub.channels_live([channel])

    async def _fill(self, channel: str, state: ChannelState) -> None:
        """Bring ``channel`` up to date from the log, then drain the waiting notifications."""
        if state.filling:
            state.again = True
            return
        state.filling = True
        try:
            await self._fill_loop(channel, state)
        except Gone:
            return
        finally:
            state.filling = False
            if state.position is not None and self.states.get(channel) is state:
                self._known(channel, state)

    async def _fill_loop(self, channel: str, state: ChannelState) -> None:
        assert self.log is not None
        event_log = self.log

        def still() -> bool:
            return self.states.get(channel) is state

        while still():
            state.again = False
            read = functools.partial(
                event_log.read_after, channel, state.position or 0, shared=False
            )
            rows = await self.retry(read, still)
            if not still():
                return
            if rows and event_log.previous(rows[0]) > (state.position or 0):
                # Retention deleted events this relay never delivered: say so.
                gone_to = event_log.previous(rows[0])
                self.emit(self.missed_event(channel, state.position or 0, gone_to, "retention"))
                self._moved(channel, state, gone_to)
            for row in rows:
                if row.id > (state.position or 0):
                    self._moved(channel, state, row.id)
                    self.filled += 1
                    self.emit(self.row_event(channel, row))
            if len(rows) >= event_log.batch:
                continue  # more to read
            if self._drain(channel, state):
                if state.again:
                    continue
                return
            if not rows:
                await self._unconfirmed(channel, state, still)

    def _drain(self, channel: str, state: ChannelState) -> bool:
        """Deliver queued notifications in order; False if a gap remains (read again)."""
        queue = sorted(state.queue, key=lambda n: n.seq)
        state.queue = []
        for index, notified in enumerate(queue):
            if not self._advance(channel, state, notified):
                state.queue = queue[index:]
                return False
        return True

    async def _unconfirmed(
        self, channel: str, state: ChannelState, still: Callable[[], bool]
    ) -> None:
        """Notifications wait beyond the position, yet a read that began after they came
        found nothing after it: either retention deleted those events (the log's head is
        past the position), or the notifications are not the log's (the head is not past
        them). The position moves only to the head; what is beyond it is dropped."""
        assert self.log is not None
        event_log = self.log
        heads = await self.retry(lambda: event_log.heads([channel]), still)
        head = heads.get(channel, 0)
        position = state.position or 0
        if head > position:
            self.emit(self.missed_event(channel, position, head, "retention"))
            self._moved(channel, state, head)
        beyond = [n for n in state.queue if n.seq > max(head, position)]
        if beyond:
            self._refuse(
                channel,
                f"{len(beyond)} durable notification(s) beyond the log's head "
                f"{event_log.format_id(head)} (the log was reset, or they are forged)",
            )
            state.queue = [n for n in state.queue if n.seq <= max(head, position)]

    def _refuse(self, channel: str, what: str) -> None:
        self.unconfirmed += 1
        log.warning("%r: dropped %s", channel, what)

    async def retry(self, call: Callable[[], Awaitable[T]], still: Callable[[], bool]) -> T:
        """Keep trying a read of the log while ``still()`` (see :func:`.reads.retry`)."""
        return await retry(call, still, self.tasks.failed)

    # -- the seam ----------------------------------------------------------------------

    def is_catching(self, sub: Subscriber) -> bool:
        return sub in self._catching

    async def reached(self, channel: str, position: int) -> None:
        """Return once ``channel``'s live position is at ``position`` or past it."""
        state = self.states.get(channel)
        if state is None:
            raise Gone
        if (state.position or 0) >= position:
            return
        waiter = asyncio.get_running_loop().create_future()
        state.waiters.append((position, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if self.states.get(channel) is not state:
                raise Gone from None
            raise

    def join(
        self, sub: Subscriber, vector: dict[str, int], stamp: Callable[[Event], Event]
    ) -> bool:
        """Write what arrived live during ``sub``'s catch-up (what it has not seen by
        ``vector``), then let it join the fan-out. False if it was dropped meanwhile."""
        seam = self._catching.get(sub)
        if seam is None or not self.hub.is_member(sub):
            return False
        for event in seam.events:
            if event.seq is not None and vector:
                if event.seq <= vector.get(event.channel, 0):
                    continue  # replayed already
                vector[event.channel] = event.seq
            if not sub.deliver(stamp(event)):
                self.hub.drop_slow(sub)
                return False
        self.stream_gone(sub)  # no longer catching up
        self.hub.join(sub)
        return True
