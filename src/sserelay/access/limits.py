"""Limits: how many streams a process, a client address and a token subject may hold
(:class:`StreamLimits`, each admitted stream holding a :class:`Lease`), and how fast a
subject may publish (:class:`RateLimiter`). Every check is O(1) in what is counted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import jitter
from ..errors import HttpError

if TYPE_CHECKING:
    from .tokens import Access


def retry_after() -> tuple[tuple[str, str], ...]:
    """A ``Retry-After`` of 1 to 5 s, jittered so refused clients do not return together."""
    return (("Retry-After", str(jitter.randint(1, 5))),)


class Lease:
    """One admitted stream's place in the limits (a :class:`~sserelay.core.protocols.Lease`)."""

    __slots__ = (
        "access",
        "channels",
        "client",
        "deadline",
        "limits",
        "on_release",
        "opened",
        "owner",
        "peer",
        "released",
        "sub",
        "subject",
    )

    def __init__(
        self,
        limits: StreamLimits,
        client: str | None,
        subject: str | None,
        deadline: float | None,
        channels: tuple[str, ...] = (),
        owner: str | None = None,
    ) -> None:
        self.limits = limits
        self.client = client
        self.subject = subject
        #: Monotonic time the stream must end by (token expiry, maximum lifetime), or None.
        self.deadline = deadline
        self.channels = channels
        self.owner = owner
        self.released = False
        #: Also called once on release (presence counts the stream gone), if set.
        self.on_release: Callable[[], None] | None = None
        #: Whose stream it is (the record of why it ended, presence): the token's ``sub``
        #: and the client's address, whatever the limits count. Set by the admission.
        self.sub: str | None = None
        self.peer: str | None = None
        #: The verified token the stream was admitted with (None: no token), and when it
        #: was opened (seconds since the epoch): what a revocation is checked against.
        self.access: Access | None = None
        self.opened = time.time()

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if not self.released:
            self.released = True
            self.limits.release(self)
            if self.on_release is not None:
                self.on_release()


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None:
        return
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class StreamLimits:
    """Counts of open streams (in all, per client address, per token subject) and of the
    distinct channels they hold (in all, and per owner: the token's subject, else the
    client's address). A stream is refused with 503 when the process is full (streams or
    channels), with 429 when its client or subject holds too many."""

    def __init__(
        self,
        max_streams: int,
        per_client: int,
        per_subject: int,
        *,
        max_channels: int = 0,
        channels_per_owner: int = 0,
    ) -> None:
        self.max_streams = max_streams
        self.per_client = per_client
        self.per_subject = per_subject
        self.max_channels = max_channels
        self.channels_per_owner = channels_per_owner
        self.total = 0
        self.clients: dict[str, int] = {}
        self.subjects: dict[str, int] = {}
        #: Channel -> admitted streams on it (its length: the distinct channels held).
        self.channels: dict[str, int] = {}
        #: Owner -> channel -> its streams on it.
        self.owners: dict[str, dict[str, int]] = {}

    def acquire(
        self,
        client: str | None,
        subject: str | None,
        deadline: float | None,
        channels: tuple[str, ...] = (),
    ) -> Lease:
        """A lease for one more stream on ``channels``, or HttpError 503 (the process is
        full) / 429 (too many for this client or subject), with a jittered ``Retry-After``.
        Cost: O(channels of the stream)."""
        if self.total >= self.max_streams:
            raise HttpError(
                503, f"relay is at its limit of {self.max_streams} streams", retry_after()
            )
        if (
            self.per_client
            and client is not None
            and self.clients.get(client, 0) >= self.per_client
        ):
            raise HttpError(
                429,
                f"too many streams from this client (at most {self.per_client})",
                retry_after(),
            )
        if (
            self.per_subject
            and subject is not None
            and self.subjects.get(subject, 0) >= self.per_subject
        ):
            raise HttpError(
                429,
                f"too many streams for this token subject (at most {self.per_subject})",
                retry_after(),
            )
        owner = subject if subject is not None else client
        self._check_channels(channels, owner)
        self.total += 1
        if self.per_client and client is not None:
            self.clients[client] = self.clients.get(client, 0) + 1
        if self.per_subject and subject is not None:
            self.subjects[subject] = self.subjects.get(subject, 0) + 1
        for channel in channels:
            self.channels[channel] = self.channels.get(channel, 0) + 1
        if owner is not None and self.channels_per_owner:
            held = self.owners.setdefault(owner, {})
            for channel in channels:
                held[channel] = held.get(channel, 0) + 1
        else:
            owner = None
        # The lease names only what was counted, so that release uncounts exactly that.
        return Lease(
            self,
            client if self.per_client else None,
            subject if self.per_subject else None,
            deadline,
            channels,
            owner,
        )

    def _check_channels(self, channels: tuple[str, ...], owner: str | None) -> None:
        if self.max_channels:
            new = sum(1 for c in channels if c not in self.channels)
            if new and len(self.channels) + new > self.max_channels:
                raise HttpError(
                    503,
                    f"relay is at its limit of {self.max_channels} distinct channels",
                    retry_after(),
                )
        if self.channels_per_owner and owner is not None:
            held = self.owners.get(owner, {})
            new = sum(1 for c in channels if c not in held)
            if new and len(held) + new > self.channels_per_owner:
                raise HttpError(
                    429,
                    f"too many distinct channels for this client or token subject "
                    f"(at most {self.channels_per_owner})",
                    retry_after(),
                )

    def release(self, lease: Lease) -> None:
        self.total -= 1
        _decrement(self.clients, lease.client)
        _decrement(self.subjects, lease.subject)
        for channel in lease.channels:
            _decrement(self.channels, channel)
        if lease.owner is not None:
            held = self.owners.get(lease.owner)
            if held is not None:
                for channel in lease.channels:
                    _decrement(held, channel)
                if not held:
                    del self.owners[lease.owner]


#: Rate-limit buckets kept at most; full (idle) ones are forgotten first.
MAX_BUCKETS = 10_000


class RateLimiter:
    """A token bucket per key: ``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, *, max_buckets: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``: 0 if allowed, else the seconds until one is due."""
        now = time.monotonic() if now is None else now
        tokens, when = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._remember(key, tokens - 1, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1 - tokens) / self.rate

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= self.max_buckets:
            self._forget(now)
        self._buckets[key] = (tokens, now)  # re-inserted: the dict stays in order of use

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled (forgetting them changes nothing), and if
        that is not enough, the least recently used half."""
        full = [
            key
            for key, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_buckets:
            for key in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
