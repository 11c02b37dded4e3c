"""A stream's catch-up: the log from the position it asks for, then the live fan-out.

A stream that comes with ``Last-Event-ID`` (or ``?lastEventId=``, ``?history=N``) is a
member of its channels that is not live yet: :func:`run_catch_up` writes it the log
from its position up to the channel's live position, then what arrived live meanwhile
(the seam, kept by :class:`~sserelay.core.delivery.Delivery`), then lets it join the
fan-out, in one step with no ``await`` in between: no gap, no duplicate.

- A client's id is compared with the **log**, never with this relay's live position:
  behind a load balancer a client may come from a relay that is ahead of this one.
  If the log has that id, the stream waits until this relay's live position reaches it
  (its listener lags); only an id the log has never handed out is "ahead" (the stream
  then starts from now).
- At most ``max_replay`` events are replayed per channel; a client further behind (or
  behind retention) first gets a ``missed`` event. ``?history=N`` asks for *up to* N
  events: it gets those that are left, without ``missed``.
- Replay is flow-controlled and fair: before writing more the stream's unsent bytes
  must fall below half of ``max_buffer`` (a client that takes nothing for
  ``drain_timeout`` seconds is dropped as slow), and after every slice of events the
  task yields, so live delivery and other catch-ups go on meanwhile.
- Catch-up reads are batched per channel and position and shared: a thousand clients
  reconnecting at the same id cost one query per batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..wire.envelope import Event
from ..wire.ids import IdSpelling, parse_last_event_id
from .delivery import Delivery
from .protocols import EventLog, Lease, Subscriber
from .reads import Gone

log = logging.getLogger("sserelay.catchup")

#: Events written to one stream before its catch-up yields to the event loop.
SLICE = 64


@dataclass
class CatchUp:
    """A stream's request to start from a position rather than from now."""

    #: Channel -> the last position the client saw (None: from ``history`` or now).
    positions: dict[str, int] | None = None
    history: int | None = None


def catch_up_request(
    channels: tuple[str, ...],
    query: Iterable[tuple[str, str]],
    header: str | None,
    spelling: IdSpelling,
) -> CatchUp | None:
    """What a stream asks to replay: ``Last-Event-ID`` (header, else ``?lastEventId=``)
    or ``?history=N``. A malformed id is logged and ignored (the stream starts from
    now): EventSource gives up for good on any non-200 answer, so it is never a 4xx.
    A malformed ``history`` is the page author's mistake and raises ``ValueError``."""
    params = dict(query)
    raw = header if header is not None else params.get("lastEventId")
    try:
        positions = parse_last_event_id(raw, channels, spelling)
    except ValueError as exc:
        log.info(
            "ignoring Last-Event-ID %r for %s: %s; starting from now",
            (raw or "")[:80],
            ",".join(channels)[:200],
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


def subscribe(
    delivery: Delivery, sub: Subscriber, request: CatchUp | None, lease: Lease | None = None
) -> None:
    """Register a new stream: live at once, or (with ``request``) after catching up."""
    if request is None:
        delivery.hub.subscribe(sub, lease)
        return
    delivery.begin_catch_up(sub, lease)
    delivery.tasks.spawn(run_catch_up(delivery, sub, request), "catch-up")


async def run_catch_up(delivery: Delivery, sub: Subscriber, request: CatchUp) -> None:
    """The job of one stream's catch-up (see the module docstring)."""
    try:
        await _catch_up(delivery, sub, request)
    except Gone:
        return
    except TimeoutError:
        # The client took nothing for drain_timeout seconds: it is a slow client.
        if delivery.hub.is_member(sub):
            delivery.hub.drop_slow(sub)


async def _catch_up(delivery: Delivery, sub: Subscriber, request: CatchUp) -> None:
    hub = delivery.hub

    def here() -> bool:
        return delivery.is_catching(sub) and hub.is_member(sub)

    for channel in sub.channels:
        state = delivery.states.get(channel)
        if state is None or not here():
            raise Gone
        await state.known.wait()
        if delivery.states.get(channel) is not state or not here():
            raise Gone
    if not delivery.enabled:
        delivery.join(sub, {}, lambda event: event)
        return
    assert delivery.log is not None
    replay = _Replay(delivery, delivery.log, sub, here)
    for channel in sorted(sub.channels):
        replay.vector[channel] = await replay.start(channel, request)
    for channel in replay.vector:
        # ?history=N asks for *up to* N events, so it never gets `missed`.
        await replay.channel(channel, report=request.positions is not None)
    if here():
        delivery.join(sub, replay.vector, replay.stamp)


class _Replay:
    """One stream's replay: its own positions (``vector``), advanced as rows are written."""

    def __init__(self, delivery: Delivery, event_log: EventLog, sub: Subscriber, here: object):
        self.delivery = delivery
        self.log = event_log
        self.sub = sub
        self.here = here
        self.vector: dict[str, int] = {}
        self.written = 0

    def still(self) -> bool:
        return bool(self.here())  # type: ignore[operator]  # a Callable[[], bool]

    def live(self, channel: str) -> int:
        state = self.delivery.states.get(channel)
        if state is None or not self.still():
            raise Gone
        return state.position or 0

    async def start(self, channel: str, request: CatchUp) -> int:
        """Where the stream starts on ``channel``."""
        live = self.live(channel)
        if request.positions is not None:
            start = request.positions[channel]
            if start <= live:
                return start
            heads = await self.delivery.retry(lambda: self.log.heads([channel]), self.still)
            if start > heads.get(channel, 0):
                log.info(
                    "Last-Event-ID position %s on %r is ahead of the log (%s): from now",
                    self.log.format_id(start),
                    channel,
                    self.log.format_id(heads.get(channel, 0)),
                )
                return self.live(channel)
            # The log has it, this relay has not delivered it yet: wait until it has.
            await self.delivery.reached(channel, start)
            return start
        if request.history:
            if live == 0:
                return 0
            history = request.history
            return await self.delivery.retry(
                lambda: self.log.back(channel, live, history, 0), self.still
            )
        return live

    def stamp(self, event: Event) -> Event:
        """``event`` with the id this stream must see, given its positions."""
        key = self.sub.id_key
        if key is None or event.seq is None or not self.vector:
            return event
        return event.with_id(".".join(self.log.format_id(self.vector[c]) for c in key))

    async def channel(self, channel: str, *, report: bool) -> None:
        """Write ``channel``'s log from ``vector[channel]`` up to the live position.
        Events that cannot be replayed (over ``max_replay``, or pruned) are skipped, with
        a ``missed`` event first if ``report``."""
        delivery, event_log = self.delivery, self.log
        live = self.live(channel)
        start = self.vector[channel]
        if start < live:
            resumed = await delivery.retry(
                lambda: event_log.back(channel, live, delivery.max_replay, start), self.still
            )
            if resumed > start:
                self.missed(channel, start, resumed, "too many events", report)
        start = self.vector[channel]
        if start < live:
            gone = await delivery.retry(
                lambda: event_log.gap_after(channel, start, live), self.still
            )
            if gone is not None:
                self.missed(channel, start, gone, "retention", report)
        while self.vector[channel] < self.live(channel):
            rows = await delivery.retry(
                functools.partial(event_log.read_after, channel, self.vector[channel]), self.still
            )
            live = self.live(channel)
            if not rows or event_log.previous(rows[0]) > self.vector[channel]:
                # A prune ran between the retention check and this read: say so.
                resumed = live if not rows else min(event_log.previous(rows[0]), live)
                self.missed(channel, self.vector[channel], resumed, "retention", report)
            for row in rows:
                if row.id > live:
                    break
                await self.write(channel, delivery.row_event(channel, row), row.id)

    def missed(self, channel: str, after: int, resumed: int, reason: str, report: bool) -> None:
        if report:
            self.deliver(self.delivery.missed_event(channel, after, resumed, reason))
        self.vector[channel] = resumed

    async def write(self, channel: str, event: Event, position: int) -> None:
        """Write one replayed event, waiting for the client first if it lags."""
        sub = self.sub
        if sub.backlog() > self.delivery.max_buffer // 2:
            async with asyncio.timeout(self.delivery.drain_timeout):
                await sub.drained()
        if not self.still():
            raise Gone
        self.vector[channel] = position
        self.delivery.replayed += 1
        self.deliver(self.stamp(event))
        self.written += 1
        if self.written % SLICE == 0:
            await asyncio.sleep(0)  # let live delivery and other catch-ups run
            if not self.still():
                raise Gone

    def deliver(self, event: Event) -> None:
        if not self.sub.deliver(event):
            self.delivery.hub.drop_slow(self.sub)
            raise Gone
