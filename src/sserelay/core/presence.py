"""Presence: who is subscribed to the channels that opted in, kept by each relay and
written to the bus in batches (docs/presence.md).

A :class:`PresenceTracker` counts, per presence channel, the open streams of each token
subject (``sub``; streams without one are counted under :data:`ANONYMOUS`). Nothing is
written per connect: every ``interval`` the :class:`PresenceService` takes the changes
since the last flush (:meth:`PresenceTracker.take`) and hands them to the bus's
:class:`PresenceStore`, which writes them as rows of a lease the relay renews and
answers which subjects joined or left the channel across all relays. Those become
``sserelay.join`` / ``sserelay.leave`` events on the channel (if enabled), at most
``max_events`` per channel and flush; past it, one ``sserelay.presence`` event says how
many changed, and clients re-read ``GET /presence/{channel}``.

Churn is coalesced: a subject whose last stream ends stays present (with 0 connections)
for ``linger`` seconds, so one that leaves and comes back within that window, on this
relay or another, changes nothing and sends no event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .. import jitter
from ..errors import BrokerUnavailable, SchemaMissing, SseRelayError
from .reads import SharedReads

log = logging.getLogger("sserelay.presence")

#: The subject under which streams without a token subject are counted.
ANONYMOUS = ""
JOIN = "sserelay.join"
LEAVE = "sserelay.leave"
#: Sent instead of the individual events past the bound of one flush.
OVERFLOW = "sserelay.presence"

Key = tuple[str, str]  # (channel, subject)


@dataclass(frozen=True, slots=True)
class Change:
    """One row of this relay: ``connections`` None removes it."""

    channel: str
    subject: str
    connections: int | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A subject that joined or left a channel across all relays (``kind``: JOIN/LEAVE)."""

    channel: str
    kind: str
    subject: str


@dataclass(slots=True)
class Batch:
    """What one flush writes: the changed rows, and every channel this relay has rows on
    (their leases are renewed)."""

    changes: list[Change] = field(default_factory=list)
    channels: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class PresenceView:
    """Who is on a channel, across all relays (what ``GET /presence/{channel}`` answers)."""

    channel: str
    subjects: tuple[str, ...]
    anonymous: int
    connections: int
    #: True if more subjects are present than were listed (see MAX_SUBJECTS).
    truncated: bool = False

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "channel": self.channel,
            "subjects": list(self.subjects),
            "anonymous": self.anonymous,
            "connections": self.connections,
        }
        if self.truncated:
            body["truncated"] = True
        return body


#: Most subjects one read lists (sorted); the counts are always complete.
MAX_SUBJECTS = 10_000
#: Channels whose last answer a relay keeps (see PresenceService.read).
MAX_CACHED_VIEWS = 1_000


def view_from_rows(
    channel: str, rows: Iterable[tuple[str, int]], limit: int = MAX_SUBJECTS
) -> PresenceView:
    """A view from ``(subject, connections)`` rows of every live lease (one subject may
    have a row per relay)."""
    subjects: set[str] = set()
    anonymous = connections = 0
    for subject, count in rows:
        connections += count
        if subject == ANONYMOUS:
            anonymous += count
        else:
            subjects.add(subject)
    listed = sorted(subjects)
    return PresenceView(channel, tuple(listed[:limit]), anonymous, connections, len(listed) > limit)


class PresenceStore(Protocol):
    """A bus's presence rows (``bus/postgres/presence.py``, ``bus/redis/presence.py``)."""

    async def write(self, batch: Batch, *, events: bool) -> list[Transition]:
        """Write ``batch`` as this relay's rows and renew their lease; with ``events``,
        the non-anonymous subjects that joined or left across all relays."""

    async def read(self, channel: str) -> PresenceView: ...

    async def prune(self, *, events: bool) -> list[Transition]:
        """Remove expired rows (any relay's); with ``events``, the subjects that left
        with them (on no relay any more)."""

    async def remove(self, channels: Iterable[str]) -> None:
        """Remove this relay's rows (a clean shutdown; ``channels``: those it has rows on)."""


class Tracked(Protocol):
    """A stream's lease that calls ``on_release`` once when the stream goes
    (:class:`sserelay.access.limits.Lease`)."""

    on_release: Callable[[], None] | None


class PresenceTracker:
    """This relay's presence state (see the module docstring). Pure bookkeeping: O(1)
    per stream and channel on connect and disconnect, O(changes) per flush."""

    def __init__(self, enabled: Callable[[str], bool], *, linger: float) -> None:
        self._enabled = enabled
        self._cache: dict[str, bool] = {}
        self.linger = linger
        #: channel -> subject -> open streams here (only positive counts).
        self._live: dict[str, dict[str, int]] = {}
        #: What the store holds for this relay: (channel, subject) -> connections.
        self._written: dict[Key, int] = {}
        #: Keys whose last stream ended, and when (monotonic): they linger, then go.
        self._gone: dict[Key, float] = {}
        self._dirty: set[Key] = set()
        #: The last write failed: write every row of the next batch, changed or not.
        self._rewrite = False

    def enabled(self, channel: str) -> bool:
        known = self._cache.get(channel)
        if known is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            known = self._cache[channel] = self._enabled(channel)
        return known

    def track(self, channels: tuple[str, ...], lease: Tracked, subject: str | None) -> None:
        """Count the stream of ``lease`` present on its presence channels (if any) until
        the lease is released."""
        tracked = tuple(c for c in channels if self.enabled(c))
        if not tracked:
            return
        who = subject or ANONYMOUS
        self.enter(tracked, who)
        lease.on_release = functools.partial(self.leave, tracked, who)

    def enter(self, channels: Iterable[str], subject: str) -> None:
        for channel in channels:
            counts = self._live.setdefault(channel, {})
            counts[subject] = counts.get(subject, 0) + 1
            self._dirty.add((channel, subject))

    def leave(self, channels: Iterable[str], subject: str) -> None:
        for channel in channels:
            counts = self._live.get(channel)
            if counts is None or subject not in counts:
                continue
            left = counts[subject] - 1
            if left:
                counts[subject] = left
            else:
                del counts[subject]
                if not counts:
                    del self._live[channel]
            self._dirty.add((channel, subject))

    @property
    def channels(self) -> set[str]:
        """The channels this relay has (or may have) rows on."""
        return {c for c, _ in self._written} | set(self._live)

    def count(self, channel: str, subject: str) -> int:
        return self._live.get(channel, {}).get(subject, 0)

    @property
    def streams(self) -> int:
        return sum(sum(c.values()) for c in self._live.values())

    def take(self, now: float) -> Batch:
        """The changes to write now: new counts, lingering subjects as 0, and the rows of
        subjects that lingered ``linger`` seconds removed. Call :meth:`written` or
        :meth:`failed` with it once the store has answered."""
        batch = Batch()
        dirty, self._dirty = self._dirty, set()
        rewrite, self._rewrite = self._rewrite, False
        for key in dirty:
            n = self.count(*key)
            if n:
                self._gone.pop(key, None)
            elif key in self._written:
                since = self._gone.setdefault(key, now)
                if now - since >= self.linger:
                    continue  # removed below
            else:
                self._gone.pop(key, None)  # came and went between two flushes: no row
                continue
            if rewrite or self._written.get(key) != n:
                batch.changes.append(Change(key[0], key[1], n))
        for key, since in list(self._gone.items()):
            if now - since >= self.linger:
                del self._gone[key]
                batch.changes.append(Change(key[0], key[1], None))
        batch.channels = {c for c, _ in self._written} | {c.channel for c in batch.changes}
        return batch

    def written(self, batch: Batch) -> None:
        """The store holds ``batch``."""
        for change in batch.changes:
            key = (change.channel, change.subject)
            if change.connections is None:
                self._written.pop(key, None)
            else:
                self._written[key] = change.connections

    def failed(self) -> None:
        """The store may hold none of it (or lost its rows: a restart empties an unlogged
        table): write every row again next time."""
        self._rewrite = True
        self._dirty.update(self._written)
        self._dirty.update((c, s) for c, counts in self._live.items() for s in counts)


PublishEvent = Callable[[str, str, object], Awaitable[None]]


class PresenceService(SharedReads):
    """The long-lived task that flushes a tracker to its store every ``interval`` seconds
    (jittered), prunes expired rows every ``lease`` seconds, and sends the join/leave
    events (``publish(channel, event, data)``); and the reads of ``GET /presence``."""

    def __init__(
        self,
        tracker: PresenceTracker,
        store: PresenceStore,
        publish: PublishEvent,
        *,
        interval: float,
        lease: float,
        events: bool,
        max_events: int,
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.store = store
        self.publish = publish
        self.interval = interval
        self.lease = lease
        self.events = events
        self.max_events = max_events
        #: Counters for /metrics.
        self.flushes = 0
        self.flush_failures = 0
        self.rows_written = 0
        self.events_sent = 0
        self.events_coalesced = 0
        self._pruned_at = self._written_at = time.monotonic()
        self._failing = False
        #: channel -> (monotonic time, view): answers reused for ``interval`` seconds.
        self._views: dict[str, tuple[float, PresenceView]] = {}

    async def read(self, channel: str) -> PresenceView:
        """``channel``'s presence across all relays: at most one read of the bus per
        channel and ``interval`` (concurrent requests share one; an answer is reused
        while it is younger than a write interval, as the rows are anyway)."""
        now = time.monotonic()
        known = self._views.get(channel)
        if known is not None and now - known[0] < self.interval:
            return known[1]
        view = await self._shared((channel,), lambda: self.store.read(channel))
        if len(self._views) >= MAX_CACHED_VIEWS:
            self._views.clear()
        self._views[channel] = (now, view)
        return view

    def status(self) -> dict[str, object]:
        """For the detailed health view: whether writes succeed, and the counters."""
        return {
            "writing": not self._failing,
            "streams": self.tracker.streams,
            "flushes": self.flushes,
            "flush_failures": self.flush_failures,
            "events": self.events_sent,
        }

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * jitter.uniform(0.9, 1.1))
            await self.flush()

    async def flush(self) -> None:
        """One round: write the changes, send the events, prune when due."""
        now = time.monotonic()
        if now - self._written_at > self.lease / 2:
            # Writes renew the lease once half of it has gone: after a gap this long (a
            # stall, a slow bus) the rows may have expired and been pruned. Write them all.
            self.tracker.failed()
        batch = self.tracker.take(now)
        try:
            transitions = await self.store.write(batch, events=self.events)
            if now - self._pruned_at >= self.lease:
                self._pruned_at = now
                transitions += await self.store.prune(events=self.events)
        except (BrokerUnavailable, SchemaMissing) as exc:
            self.flush_failures += 1
            self.tracker.failed()
            # Once per outage at WARNING (it is retried every interval).
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "presence: writing %d rows failed: %s", len(batch.changes), exc)
            self._failing = True
            return
        if self._failing:
            log.info("presence: writing again")
            self._failing = False
        self.tracker.written(batch)
        self._written_at = now
        self.flushes += 1
        self.rows_written += len(batch.changes)
        if transitions:
            await self._send(transitions)

    async def _send(self, transitions: Sequence[Transition]) -> None:
        by_channel: dict[str, list[Transition]] = {}
        for transition in transitions:
            by_channel.setdefault(transition.channel, []).append(transition)
        for channel, items in by_channel.items():
            sent = items[: self.max_events]
            try:
                for item in sent:
                    await self.publish(channel, item.kind, {"subject": item.subject})
                if len(items) > len(sent):
                    rest = items[len(sent) :]
                    joined = sum(1 for t in rest if t.kind == JOIN)
                    summary = {"joined": joined, "left": len(rest) - joined}
                    await self.publish(channel, OVERFLOW, summary)
            except SseRelayError as exc:
                log.warning("presence: events on %r not sent: %s", channel[:80], exc)
                continue
            self.events_sent += len(sent)
            self.events_coalesced += len(items) - len(sent)

    async def remove_rows(self) -> None:
        """A clean shutdown: take this relay's rows away now rather than at their lease's
        end (a failure is logged: they expire then)."""
        try:
            async with asyncio.timeout(2):
                await self.store.remove(self.tracker.channels)
        except (SseRelayError, TimeoutError) as exc:
            log.warning("presence rows not removed (they expire with their lease): %s", exc)
