"""The hub: who is subscribed to what, and the fan-out.

The hot path is :meth:`Hub.dispatch`: one notification is turned into an
:class:`~sserelay.events.Event` (encoded once) and handed to every subscriber of
its channel in one synchronous loop: no task, queue or coroutine per subscriber.
A subscriber that cannot keep up reports it and is dropped after the loop, so it
never costs the others memory or latency.

The hub knows nothing about HTTP: the native server, the ASGI app and the
Django view provide :class:`Subscriber` objects.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from . import jitter
from .broker import Broker
from .events import Event, event_from_notification
from .sse import encode_comment, encode_retry

DURABLE_PREFIX = '{"seq":'  # what sserelay.publish() notifies (see replay.py)

if TYPE_CHECKING:
    from .replay import CatchUp, Replay

log = logging.getLogger("sserelay.hub")

#: A batch (see Hub.flush) stays under this size: a caught-up stream may take one frame
#: bigger than its buffer bound, and that frame should be one event's size, or close.
BATCH_BYTES = 64 * 1024

PING = encode_comment("ping")
READY = encode_comment("ready")


class Subscriber(Protocol):
    """One open stream, as the hub sees it."""

    #: The channels this stream receives, fixed for its lifetime.
    channels: tuple[str, ...]
    #: Channels not yet live on the broker; READY is written when it empties.
    pending: set[str]
    #: Monotonic time of the next heartbeat.
    next_ping: float
    #: Set by the hub: the sorted channels whose positions make this stream's composite
    #: event ids (multi-channel streams on durable channels), else None.
    id_key: tuple[str, ...] | None

    def deliver(self, event: Event) -> bool:
        """Write ``event``; return False if the subscriber is too far behind (it gets dropped)."""

    def write(self, data: bytes) -> None:
        """Write raw SSE bytes (a comment, a ``retry:``)."""

    def close(self, farewell: bytes = b"") -> None:
        """End the stream cleanly after writing ``farewell``."""

    def abort(self) -> None:
        """Drop the connection now (slow client)."""


class Lease(Protocol):
    """What a stream was admitted with (see :mod:`sserelay.access`): released once, when
    the hub forgets the stream, and the monotonic time it must end by (None: never)."""

    deadline: float | None

    def release(self) -> None:
        """Give back the stream's place in the limits."""


class Hub:
    """Subscriptions and fan-out for one process."""

    def __init__(self, *, heartbeat: float = 15.0, retry_ms: int = 2000) -> None:
        self.heartbeat = heartbeat
        #: The ``retry:`` (jittered) sent to a stream ended at its deadline.
        self.retry_ms = retry_ms
        self.broker: Broker | None = None
        self.replay: Replay | None = None
        #: Everyone on a channel (live or catching up): decides LISTEN/UNLISTEN and READY.
        self._members: dict[str, dict[Subscriber, None]] = {}
        #: The live fan-out sets.
        self._channels: dict[str, dict[Subscriber, None]] = {}
        self._subscribers: dict[Subscriber, None] = {}
        #: Streams catching up from the log, with the live events that arrived meanwhile.
        self._catching: dict[Subscriber, list[Event]] = {}
        #: Live streams with composite ids (durable events then need a variant frame).
        self._composite = 0
        #: Leases of admitted streams, released on unsubscribe.
        self._leases: dict[Subscriber, Lease] = {}
        #: (deadline, tie-breaker, stream): a min-heap, checked by the heartbeat task.
        #: Entries of streams gone early stay until popped or compacted away.
        self._deadlines: list[tuple[float, int, Subscriber]] = []
        self._timed = 0  # live streams with a deadline
        self._order = itertools.count()
        #: Live events of this event-loop step, written by :meth:`flush` at its end.
        self._gathered: list[Event] = []
        #: Channel -> monotonic time of its last fan-out (streams that got one need no ping).
        self._last_event: dict[str, float] = {}
        self.closing = False
        # Plain counters, read by the metrics collector at scrape time (no hot-path cost).
        self.events_received = 0
        self.deliveries = 0
        self.slow_dropped = 0
        self.streams_opened = 0
        self.streams_expired = 0

    # -- subscriptions ---------------------------------------------------------------

    def attach(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def stream_count(self) -> int:
        return len(self._subscribers)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscribe(
        self, sub: Subscriber, catch_up: CatchUp | None = None, *, lease: Lease | None = None
    ) -> None:
        """Register ``sub`` on its channels; writes READY now or once they are live.

        With ``catch_up`` (and durable channels enabled) the stream first replays the
        log from the requested position, then joins the live fan-out with no gap. A
        ``lease`` is released when the stream is forgotten; if it has a deadline, the
        stream is ended then, with a jittered ``retry:`` (see :meth:`expire_due`).
        """
        broker = self.broker
        self._subscribers[sub] = None
        self.streams_opened += 1
        if lease is not None:
            self._leases[sub] = lease
            if lease.deadline is not None:
                self._timed += 1
                heapq.heappush(self._deadlines, (lease.deadline, next(self._order), sub))
        sub.next_ping = self._next_ping(time.monotonic())
        sub.id_key = tuple(sorted(sub.channels)) if len(sub.channels) > 1 else None
        for channel in sub.channels:
            members = self._members.get(channel)
            if members is None:
                members = self._members[channel] = {}
                self._channels[channel] = {}
                if self.replay is not None:
                    self.replay.track(channel)
                if broker is not None:
                    broker.listen(channel)
            members[sub] = None
        sub.pending = {c for c in sub.channels if not self.is_live(c)}
        if not sub.pending:
            sub.write(READY)
        if catch_up is not None and self.replay is not None:
            self._catching[sub] = []
            self.replay.start_catch_up(sub, catch_up)
        else:
            self._join(sub)

    def _join(self, sub: Subscriber) -> None:
        for channel in sub.channels:
            self._channels[channel][sub] = None
        if sub.id_key is not None:
            self._composite += 1

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (idempotent). The last subscriber of a channel UNLISTENs it."""
        if self._subscribers.pop(sub, False) is False:
            return
        lease = self._leases.pop(sub, None)
        if lease is not None:
            if lease.deadline is not None:
                self._timed -= 1
            lease.release()
        if self._catching.pop(sub, None) is None and sub.id_key is not None:
            self._composite -= 1
        for channel in sub.channels:
            members = self._members.get(channel)
            if members is None:
                continue
            members.pop(sub, None)
            self._channels[channel].pop(sub, None)
            if not members:
                del self._members[channel]
                del self._channels[channel]
                self._last_event.pop(channel, None)
                if self.replay is not None:
                    self.replay.forget(channel)
                if self.broker is not None:
                    self.broker.unlisten(channel)

    def is_live(self, channel: str) -> bool:
        """LISTENed, and (for durable channels) its log position known."""
        if self.broker is None or not self.broker.is_listening(channel):
            return False
        return self.replay is None or self.replay.is_ready(channel)

    def on_listening(self, channels: Iterable[str]) -> None:
        """Broker callback: ``channels`` are LISTENed (first time or after a reconnect)."""
        channels = [c for c in channels if c in self._members]
        if self.replay is not None:
            self.replay.on_listening(channels)  # calls channels_live once positions are known
        else:
            self.channels_live(channels)

    def channels_live(self, channels: Iterable[str]) -> None:
        """``channels`` are live: tell the streams that waited for them."""
        for channel in channels:
            for sub in self._members.get(channel, ()):
                if sub.pending:
                    sub.pending.discard(channel)
                    if not sub.pending:
                        sub.write(READY)

    # -- catch-up (see replay.py) ----------------------------------------------------

    def is_catching_up(self, sub: Subscriber) -> bool:
        return sub in self._catching

    def stamp(self, event: Event, sub: Subscriber, vector: dict[str, int]) -> Event:
        """``event`` with the id ``sub`` must see, given its positions ``vector``."""
        if sub.id_key is None or event.seq is None or not vector:
            return event
        return event.with_id(".".join(self._id_text(vector[c]) for c in sub.id_key))

    def _id_text(self, position: int) -> str:
        """A position as its log spells it in ``id:`` (Redis: the stream entry id)."""
        return str(position) if self.replay is None else self.replay.format_id(position)

    def finish_catch_up(self, sub: Subscriber, vector: dict[str, int]) -> None:
        """Write what arrived live during the catch-up, then join the live fan-out."""
        backlog = self._catching.pop(sub, None)
        if backlog is None:
            return
        for event in backlog:
            if event.seq is not None and vector:
                if event.seq <= vector[event.channel]:
                    continue  # replayed already
                vector[event.channel] = event.seq
            if not sub.deliver(self.stamp(event, sub, vector)):
                self._catching[sub] = []  # so unsubscribe does not count it as live
                self.drop_slow(sub)
                return
        self._join(sub)

    # -- fan-out ---------------------------------------------------------------------

    def dispatch(self, channel: str, payload: str) -> None:
        """Broker callback: deliver one notification to every subscriber of ``channel``."""
        self.events_received += 1
        if channel not in self._members:
            return
        replay = self.replay
        if (
            replay is not None
            and payload.startswith(DURABLE_PREFIX)
            and replay.on_notification(channel, payload)
        ):
            return  # durable: replay delivers it, in order, through publish_event
        self.publish_event(event_from_notification(channel, payload))

    def publish_event(self, event: Event) -> None:
        """Write an already-built event to every subscriber of its channel.

        Live events without a log position are gathered until the end of the event-loop
        step they arrived in (a burst read from the bus), and each stream then gets the
        consecutive events of one channel in one write: one send per stream and burst,
        not per event. An event with a position (durable) first flushes what was
        gathered, so that every stream still sees the bus's order.
        """
        if event.seq is None:
            if not self._gathered:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:  # no loop (a synchronous caller): write it now
                    self._fan_out(event, (event,))
                    return
            self._gathered.append(event)
            return
        self.flush()
        self._fan_out(event, (event,))

    def flush(self) -> None:
        """Write the gathered events: each run of one channel's events as one frame."""
        gathered, self._gathered = self._gathered, []
        start = 0
        while start < len(gathered):
            channel = gathered[start].channel
            end, size = start + 1, len(gathered[start].chunked)
            while (
                end < len(gathered)
                and gathered[end].channel == channel
                and size + len(gathered[end].chunked) <= BATCH_BYTES
            ):
                size += len(gathered[end].chunked)
                end += 1
            run = gathered[start:end]
            self._fan_out(run[0] if len(run) == 1 else Batch(run), run)
            start = end

    def _fan_out(self, frame: Event | Batch, events: Sequence[Event]) -> None:
        """Write ``frame`` (one event, or a batch of one channel's) to the channel."""
        channel = events[0].channel
        subs = self._channels.get(channel)
        if subs:
            self._last_event[channel] = time.monotonic()
            if self._composite and frame.seq is not None:
                assert isinstance(frame, Event)
                slow = self._fan_out_composite(frame, subs)
            else:
                slow = [sub for sub in subs if not sub.deliver(frame)]  # type: ignore[arg-type]  # a Batch quacks like an Event
            self.deliveries += (len(subs) - len(slow)) * len(events)
            for sub in slow:
                self.drop_slow(sub)
        if self._catching:
            for sub, backlog in self._catching.items():
                if channel in sub.channels:
                    backlog.extend(events)

    def _fan_out_composite(self, event: Event, subs: dict[Subscriber, None]) -> list[Subscriber]:
        """Fan-out of a durable event when some streams need composite ids."""
        assert self.replay is not None
        positions = self.replay.positions
        variants: dict[tuple[str, ...], Event] = {}
        slow = []
        for sub in subs:
            key = sub.id_key
            if key is None:
                frame = event
            else:
                frame = variants.get(key)  # type: ignore[assignment]  # filled just below
                if frame is None:
                    frame = variants[key] = event.with_id(
                        ".".join(self._id_text(positions(c)) for c in key)
                    )
            if not sub.deliver(frame):
                slow.append(sub)
        return slow

    def drop_slow(self, sub: Subscriber) -> None:
        self.slow_dropped += 1
        log.info("dropping slow client on %s", ",".join(sub.channels))
        self.unsubscribe(sub)
        sub.abort()

    # -- heartbeats and shutdown -----------------------------------------------------

    def _next_ping(self, now: float) -> float:
        return now + self.heartbeat * jitter.uniform(1.0, 1.25)

    def send_heartbeats(self, now: float) -> int:
        """Write a ping to every stream whose heartbeat is due, unless one of its channels
        had an event since its last one (that kept the connection busy just as well);
        return how many were pinged. At 100,000 streams a ping per stream every ~17 s
        is ~6,000 writes a second, as many as the events of a busy relay."""
        due = [sub for sub in self._subscribers if sub.next_ping <= now]
        since = now - self.heartbeat
        recent = self._last_event
        pinged = 0
        for sub in due:
            last = max([recent.get(c, 0.0) for c in sub.channels])
            if last > since and sub not in self._catching:
                sub.next_ping = self._next_ping(last)  # one heartbeat after that event
                continue
            sub.next_ping = self._next_ping(now)
            sub.write(PING)
            pinged += 1
        return pinged

    def expire_due(self, now: float) -> int:
        """End every stream whose deadline (token expiry, maximum lifetime) has passed,
        with a jittered ``retry:`` so that its browser reconnects (with a fresh token);
        return how many. Cost: one heap pop per stream ended or gone."""
        heap = self._deadlines
        ended = 0
        while heap and heap[0][0] <= now:
            deadline, _, sub = heapq.heappop(heap)
            lease = self._leases.get(sub)
            if lease is None or lease.deadline != deadline:
                continue  # gone before its deadline
            self.unsubscribe(sub)
            sub.close(retry_hint(self.retry_ms, farewell=True))
            ended += 1
        if len(heap) > 2 * self._timed + 64:
            # Streams that left early: drop their entries (amortised O(1) per stream).
            self._deadlines = [entry for entry in heap if entry[2] in self._leases]
            heapq.heapify(self._deadlines)
        self.streams_expired += ended
        return ended

    async def run_heartbeats(self) -> None:
        """Owner-managed task: ping idle streams so proxies keep them open, and end the
        streams whose deadline has passed."""
        tick = min(1.0, self.heartbeat / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.expire_due(now)
            self.send_heartbeats(now)

    def close_all(self, retry_ms: int) -> int:
        """Shutdown: tell every stream to come back in ``retry_ms`` (+ jitter) and close it."""
        self.flush()
        self.closing = True
        subs = list(self._subscribers)
        for sub in subs:
            self.unsubscribe(sub)
            sub.close(retry_hint(retry_ms, farewell=True))
        return len(subs)


class Batch:
    """Consecutive live events of one channel, written to each stream at once.

    Streams read ``frame`` or ``chunked``, as of an :class:`Event`; it has no position.
    """

    __slots__ = ("channel", "chunked", "frame")

    seq = None

    def __init__(self, events: Sequence[Event]) -> None:
        self.channel = events[0].channel
        self.frame = b"".join(e.frame for e in events)
        self.chunked = b"".join(e.chunked for e in events)


def retry_hint(retry_ms: int, *, farewell: bool = False) -> bytes:
    """A jittered ``retry:`` so that browsers do not all come back in the same instant.

    A stream opens with ``retry_ms`` + up to 50%; a shutdown farewell adds up to
    ``max(retry_ms, 1 s)``, spreading the reconnect wave of a restart.
    """
    spread = max(retry_ms, 1000) if farewell else retry_ms // 2
    return encode_retry(retry_ms + jitter.randint(0, spread))
