"""The hub: who is subscribed to what, and the fan-out loop. It moves bytes, nothing else.

Every event is encoded once (:class:`~sserelay.wire.envelope.Event` holds its frame)
and the same bytes are written to every live subscriber of its channel, from one loop,
with no task, queue or coroutine per client. A subscriber whose socket cannot keep up
reports it and is dropped after the loop, so it never costs the others memory or
latency. Plain events of one burst (what one read from the bus gave) are gathered until
the end of the event-loop step and written to each stream as one frame per run of one
channel's events: one send per stream and burst, not per event (measured in
docs/benchmarks.md). A durable event writes what was gathered first: the bus's order is
kept on every stream.

What an event *is* (raw or durable, in order or not) is decided above, by the channel
owner (:class:`~sserelay.core.delivery.Delivery`), which the hub calls through the small
:class:`ChannelOwner` interface: when a channel gets its first member or loses its last,
whether a channel is live, a composite id for a multi-channel stream, and when a stream
is forgotten. A stream may join as a member that is not live yet (it is catching up
from the log); it enters the fan-out with :meth:`Hub.join`.

The hub knows nothing about HTTP: the native server, the ASGI app and the Django view
provide :class:`~sserelay.core.protocols.Subscriber` objects.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from .. import jitter
from ..wire.envelope import Event
from ..wire.sse import encode_comment, encode_retry
from .endings import Endings
from .protocols import Lease, Subscriber

log = logging.getLogger("sserelay.hub")

#: A batch (see Hub.flush) stays under this size: a caught-up stream may take one frame
#: bigger than its buffer bound, and that frame should be one event's size, or close.
BATCH_BYTES = 64 * 1024

#: Channels of the relay's own streams (the operator's page): no client may name one
#: (:mod:`sserelay.wire.channels`), the relay feeds them in-process (never from the bus:
#: the owner is not told of them) and their endings are not recorded.
INTERNAL_PREFIX = "sserelay."

PING = encode_comment("ping")
READY = encode_comment("ready")


class ChannelOwner(Protocol):
    """What the hub tells, and asks, the owner of the channels."""

    def first_member(self, channel: str) -> None:
        """``channel`` got its first member: subscribe to it on the bus."""

    def last_member(self, channel: str) -> None:
        """``channel`` lost its last member: unsubscribe from it."""

    def is_live(self, channel: str) -> bool:
        """Events published on ``channel`` from now on reach its members."""

    def composite_id(self, key: tuple[str, ...]) -> str:
        """The id a live stream on the (sorted) channels ``key`` gives the current event."""

    def stream_gone(self, sub: Subscriber) -> None:
        """``sub`` was forgotten (it may have been catching up)."""


class Hub:
    """Subscriptions and fan-out for one process."""

    def __init__(self, owner: ChannelOwner, *, heartbeat: float = 15.0, retry_ms: int = 2000):
        self.owner = owner
        self.heartbeat = heartbeat
        #: The ``retry:`` (jittered) sent to a stream ended at its deadline.
        self.retry_ms = retry_ms
        #: Everyone on a channel (live or catching up): decides subscriptions and READY.
        self._members: dict[str, dict[Subscriber, None]] = {}
        #: The live fan-out sets.
        self._channels: dict[str, dict[Subscriber, None]] = {}
        #: Every stream, and whether it is live (in the fan-out sets).
        self._subscribers: dict[Subscriber, bool] = {}
        #: Live streams with composite ids (durable events then need a variant frame).
        self._composite = 0
        #: Leases of admitted streams, released on unsubscribe.
        self._leases: dict[Subscriber, Lease] = {}
        #: (deadline, tie-breaker, stream): a min-heap, checked by the heartbeat task.
        #: Entries of streams gone early stay until popped or compacted away.
        self._deadlines: list[tuple[float, int, Subscriber]] = []
        self._timed = 0  # streams with a deadline
        self._order = itertools.count()
        #: Plain events of this event-loop step, written by :meth:`flush` at its end.
        self._gathered: list[Event] = []
        #: Channel -> monotonic time of its last fan-out (streams that got one need no ping).
        self._last_event: dict[str, float] = {}
        self.closing = False
        # Plain counters, read by the metrics collector at scrape time (no hot-path cost).
        self.deliveries = 0
        self.slow_dropped = 0
        self.streams_opened = 0
        self.streams_expired = 0
        #: Events fanned out per channel (for events/s on the operator's page); a channel's
        #: count goes with its last member.
        self.channel_events: dict[str, int] = {}
        #: Why the last streams ended (the operator's page; docs/admin.md).
        self.endings = Endings()
        #: Streams ended by :meth:`end_where` (revoked).
        self.streams_revoked = 0

    # -- subscriptions ---------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._subscribers)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def channels(self) -> list[str]:
        return list(self._channels)

    def member_counts(self) -> Iterator[tuple[str, int]]:
        """Each channel with its streams (live or catching up), the relay's own left out."""
        for channel, members in self._members.items():
            if not channel.startswith(INTERNAL_PREFIX):
                yield channel, len(members)

    def has_channel(self, channel: str) -> bool:
        return channel in self._members

    def members(self, channel: str) -> Iterable[Subscriber]:
        return self._members.get(channel, ())

    def is_member(self, sub: Subscriber) -> bool:
        return sub in self._subscribers

    def is_joined(self, sub: Subscriber) -> bool:
        """``sub`` is in the live fan-out (not catching up, not gone)."""
        return self._subscribers.get(sub, False)

    def subscribe(self, sub: Subscriber, lease: Lease | None = None, *, live: bool = True) -> None:
        """Register ``sub`` on its channels; writes READY now or once they are live.

        ``live=False``: a member that is not in the fan-out yet (it is catching up), until
        :meth:`join`. A ``lease`` is released when the stream is forgotten; if it has a
        deadline, the stream is ended then, with a jittered ``retry:`` (:meth:`expire_due`).
        """
        self._subscribers[sub] = False
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
                if not channel.startswith(INTERNAL_PREFIX):  # fed in-process, not by the bus
                    self.owner.first_member(channel)
            members[sub] = None
        sub.pending = {
            c
            for c in sub.channels
            if not c.startswith(INTERNAL_PREFIX) and not self.owner.is_live(c)
        }
        if not sub.pending:
            sub.write(READY)
        if live:
            self.join(sub)

    def join(self, sub: Subscriber) -> None:
        """``sub`` (a member) enters the live fan-out: from now on it gets every event."""
        if self._subscribers.get(sub, True):
            return  # gone, or live already
        # What was gathered came before this stream joined: its owner gave it those already.
        self.flush()
        self._subscribers[sub] = True
        for channel in sub.channels:
            self._channels[channel][sub] = None
        if sub.id_key is not None:
            self._composite += 1

    def unsubscribe(self, sub: Subscriber, reason: str = "client_gone") -> None:
        """Forget ``sub`` (idempotent: the first call's ``reason`` is the one recorded, one
        of :data:`~sserelay.core.endings.REASONS`). The last member of a channel
        unsubscribes it."""
        live = self._subscribers.pop(sub, None)
        if live is None:
            return
        lease = self._leases.pop(sub, None)
        if not sub.channels[0].startswith(INTERNAL_PREFIX):  # not the relay's own streams
            self.endings.record(
                reason,
                sub.channels,
                lease.sub if lease is not None else None,
                lease.peer if lease is not None else None,
            )
        if lease is not None:
            if lease.deadline is not None:
                self._timed -= 1
            lease.release()
        if live and sub.id_key is not None:
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
                self.channel_events.pop(channel, None)
                if not channel.startswith(INTERNAL_PREFIX):
                    self.owner.last_member(channel)
        self.owner.stream_gone(sub)

    def channels_live(self, channels: Iterable[str]) -> None:
        """``channels`` are live: tell the streams that waited for them."""
        for channel in channels:
            for sub in self._members.get(channel, ()):
                if sub.pending:
                    sub.pending.discard(channel)
                    if not sub.pending:
                        sub.write(READY)

    # -- fan-out ---------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Write ``event`` to every live subscriber of its channel: a plain event at the end
        of this event-loop step with the others of its burst, a durable one now (after the
        gathered ones, in the bus's order)."""
        if event.seq is None:
            if not self._gathered:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:  # no running loop (a synchronous caller): write it now
                    self._fan_out(event, 1)
                    return
            self._gathered.append(event)
            return
        self.flush()
        self._fan_out(event, 1)

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
            self._fan_out(run[0] if len(run) == 1 else Event.joined(run), len(run))
            start = end

    def _fan_out(self, event: Event, count: int) -> None:
        """Write ``event`` (one event, or ``count`` of one channel's joined) to the channel."""
        subs = self._channels.get(event.channel)
        if not subs:
            return
        self._last_event[event.channel] = time.monotonic()
        self.channel_events[event.channel] = self.channel_events.get(event.channel, 0) + count
        if self._composite and event.seq is not None:
            slow = self._fan_out_composite(event, subs)
        else:
            slow = [sub for sub in subs if not sub.deliver(event)]
        self.deliveries += (len(subs) - len(slow)) * count
        for sub in slow:
            self.drop_slow(sub)

    def _fan_out_composite(self, event: Event, subs: dict[Subscriber, None]) -> list[Subscriber]:
        """Fan-out of a durable event when some streams need composite ids."""
        variants: dict[tuple[str, ...], Event] = {}
        slow = []
        for sub in subs:
            key = sub.id_key
            frame = event
            if key is not None:
                variant = variants.get(key)
                if variant is None:
                    variant = variants[key] = event.with_id(self.owner.composite_id(key))
                frame = variant
            if not sub.deliver(frame):
                slow.append(sub)
        return slow

    def drop_slow(self, sub: Subscriber) -> None:
        self.slow_dropped += 1
        log.info("dropping slow client on %s", ",".join(sub.channels)[:200])
        self.unsubscribe(sub, "slow")
        sub.abort()

    # -- heartbeats, deadlines and shutdown ------------------------------------------

    def _next_ping(self, now: float) -> float:
        return now + self.heartbeat * jitter.uniform(1.0, 1.25)

    def send_heartbeats(self, now: float) -> int:
        """Write a ping to every stream whose heartbeat is due, unless one of its channels
        had an event since (that kept the connection busy just as well); return how many
        were pinged. At 100,000 streams a ping per stream every ~17 s is ~6,000 writes a
        second, as many as the events of a busy relay."""
        due = [sub for sub in self._subscribers if sub.next_ping <= now]
        since = now - self.heartbeat
        recent = self._last_event
        pinged = 0
        for sub in due:
            last = max([recent.get(c, 0.0) for c in sub.channels])
            if last > since and self._subscribers.get(sub):
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
            self.unsubscribe(sub, "expired")
            sub.close(retry_hint(self.retry_ms, farewell=True))
            ended += 1
        if len(heap) > 2 * self._timed + 64:
            # Streams that left early: drop their entries (amortised O(1) per stream).
            self._deadlines = [entry for entry in heap if entry[2] in self._leases]
            heapq.heapify(self._deadlines)
        self.streams_expired += ended
        return ended

    async def run_heartbeats(self) -> None:
        """A long-lived task: ping idle streams so proxies keep them open, and end the
        streams whose deadline has passed."""
        tick = min(1.0, self.heartbeat / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.expire_due(now)
            self.send_heartbeats(now)

    def end_where(
        self, ends: Callable[[Subscriber, Lease | None], bool], farewell: Callable[[], bytes]
    ) -> int:
        """End every stream ``ends`` names (given the stream and its lease) after writing
        ``farewell()`` to it (called per stream: its ``retry:`` is jittered); how many.
        Recorded as ``revoked``. Cost: one call of ``ends`` per open stream."""
        self.flush()
        ended = [sub for sub in self._subscribers if ends(sub, self._leases.get(sub))]
        for sub in ended:
            self.unsubscribe(sub, "revoked")
            sub.close(farewell())
        self.streams_revoked += len(ended)
        return len(ended)

    def close_all(self, retry_ms: int) -> int:
        """Shutdown: tell every stream to come back in ``retry_ms`` (+ jitter) and close it."""
        self.flush()
        self.closing = True
        subs = list(self._subscribers)
        for sub in subs:
            self.unsubscribe(sub, "shutdown")
            sub.close(retry_hint(retry_ms, farewell=True))
        return len(subs)


def retry_hint(retry_ms: int, *, farewell: bool = False) -> bytes:
    """A jittered ``retry:`` so that browsers do not all come back in the same instant.

    A stream opens with ``retry_ms`` + up to 50%; a shutdown farewell adds up to
    ``max(retry_ms, 1 s)``, spreading the reconnect wave of a restart.
    """
    spread = max(retry_ms, 1000) if farewell else retry_ms // 2
    return encode_retry(retry_ms + jitter.randint(0, spread))
