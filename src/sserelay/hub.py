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
import logging
import random
import time
from collections.abc import Iterable
from typing import Protocol

from .broker import Broker
from .events import Event, event_from_notification
from .sse import encode_comment

log = logging.getLogger("sserelay.hub")

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

    def deliver(self, event: Event) -> bool:
        """Write ``event``; return False if the subscriber is too far behind (it gets dropped)."""

    def write(self, data: bytes) -> None:
        """Write raw SSE bytes (a comment, a ``retry:``)."""

    def close(self, farewell: bytes = b"") -> None:
        """End the stream cleanly after writing ``farewell``."""

    def abort(self) -> None:
        """Drop the connection now (slow client)."""


class Hub:
    """Subscriptions and fan-out for one process."""

    def __init__(self, *, heartbeat: float = 15.0) -> None:
        self.heartbeat = heartbeat
        self.broker: Broker | None = None
        self._channels: dict[str, dict[Subscriber, None]] = {}
        self._subscribers: dict[Subscriber, None] = {}
        self.closing = False
        # Plain counters, read by the metrics collector at scrape time (no hot-path cost).
        self.events_received = 0
        self.deliveries = 0
        self.slow_dropped = 0
        self.streams_opened = 0

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

    def subscribe(self, sub: Subscriber) -> None:
        """Register ``sub`` on its channels; writes READY now or once they are live."""
        broker = self.broker
        self._subscribers[sub] = None
        self.streams_opened += 1
        sub.next_ping = self._next_ping(time.monotonic())
        pending = set()
        for channel in sub.channels:
            subs = self._channels.get(channel)
            if subs is None:
                subs = self._channels[channel] = {}
                if broker is not None:
                    broker.listen(channel)
            subs[sub] = None
            if broker is None or not broker.is_listening(channel):
                pending.add(channel)
        sub.pending = pending
        if not pending:
            sub.write(READY)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (idempotent). The last subscriber of a channel UNLISTENs it."""
        if self._subscribers.pop(sub, False) is False:
            return
        for channel in sub.channels:
            subs = self._channels.get(channel)
            if subs is None:
                continue
            subs.pop(sub, None)
            if not subs:
                del self._channels[channel]
                if self.broker is not None:
                    self.broker.unlisten(channel)

    def on_listening(self, channels: Iterable[str]) -> None:
        """Broker callback: ``channels`` are live; tell streams that waited for them."""
        for channel in channels:
            for sub in self._channels.get(channel, ()):
                if sub.pending:
                    sub.pending.discard(channel)
                    if not sub.pending:
                        sub.write(READY)

    # -- fan-out ---------------------------------------------------------------------

    def dispatch(self, channel: str, payload: str) -> None:
        """Broker callback: deliver one notification to every subscriber of ``channel``."""
        subs = self._channels.get(channel)
        self.events_received += 1
        if not subs:
            return
        self.publish_event(event_from_notification(channel, payload))

    def publish_event(self, event: Event) -> None:
        """Write an already-built event to every subscriber of its channel."""
        subs = self._channels.get(event.channel)
        if not subs:
            return
        slow = [sub for sub in subs if not sub.deliver(event)]
        self.deliveries += len(subs) - len(slow)
        for sub in slow:
            self.drop_slow(sub)

    def drop_slow(self, sub: Subscriber) -> None:
        self.slow_dropped += 1
        log.info("dropping slow client on %s", ",".join(sub.channels))
        self.unsubscribe(sub)
        sub.abort()

    # -- heartbeats and shutdown -----------------------------------------------------

    def _next_ping(self, now: float) -> float:
        return now + self.heartbeat * random.uniform(1.0, 1.25)

    def send_heartbeats(self, now: float) -> int:
        """Write a ping to every stream whose heartbeat is due; return how many."""
        due = [sub for sub in self._subscribers if sub.next_ping <= now]
        for sub in due:
            sub.next_ping = self._next_ping(now)
            sub.write(PING)
        return len(due)

    async def run_heartbeats(self) -> None:
        """Owner-managed task: ping idle streams so proxies keep them open."""
        tick = min(1.0, self.heartbeat / 4)
        while True:
            await asyncio.sleep(tick)
            self.send_heartbeats(time.monotonic())

    def close_all(self, retry_ms: int) -> int:
        """Shutdown: tell every stream to come back in ``retry_ms`` (+ jitter) and close it."""
        self.closing = True
        subs = list(self._subscribers)
        for sub in subs:
            delay = retry_ms + random.randint(0, max(retry_ms, 1000))
            self.unsubscribe(sub)
            sub.close(f"retry: {delay}\n\n".encode())
        return len(subs)
