"""Why streams ended: a bounded ring of the last stream endings of one process.

Every way a stream ends goes through the hub (:meth:`~sserelay.core.hub.Hub.unsubscribe`,
or a refusal by the limits at admission), which records one :class:`Ending` here with
one of :data:`REASONS`. The operator's page (docs/admin.md) shows the last few hundred,
from every relay of the bus, so that "why did this user stop receiving?" has an answer.

Cost: one small tuple per ending, a ``deque`` append; the ring never grows past its size.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Why a stream ended:
#:
#: - ``expired``: its token expired, or it reached ``max_stream_lifetime``;
#: - ``revoked``: its token (subject, id) was revoked;
#: - ``slow``: the client did not take what it was sent (``max_client_buffer``);
#: - ``limit``: refused at admission by a limit (streams or channels per process, client,
#:   subject): the client was streaming, reconnected and was turned away;
#: - ``client_gone``: the client closed the connection;
#: - ``shutdown``: the relay shut down (it told the client when to come back).
REASONS = ("expired", "revoked", "slow", "limit", "client_gone", "shutdown")

#: Endings kept per process (and per relay heard from on the bus).
RING_SIZE = 300


@dataclass(frozen=True, slots=True)
class Ending:
    """One stream that ended: when (Unix time), on which channels, whose (the token's
    ``sub``, if any; the client's address), and why (one of :data:`REASONS`). ``seq``
    numbers the endings of one process, so that copies heard twice are merged once."""

    seq: int
    at: float
    reason: str
    channels: tuple[str, ...]
    subject: str | None
    client: str | None

    def compact(self) -> list[Any]:
        """The JSON form: ``[seq, at, reason, channels, subject, client]``."""
        return [self.seq, round(self.at, 3), self.reason, list(self.channels), self.subject,
                self.client]  # fmt: skip

    @classmethod
    def from_compact(cls, item: Any) -> Ending:
        """The inverse of :meth:`compact`; ValueError if ``item`` is not one."""
        try:
            seq, at, reason, channels, subject, client = item
            ending = cls(
                int(seq),
                float(at),
                str(reason),
                tuple(str(c) for c in channels),
                None if subject is None else str(subject),
                None if client is None else str(client),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a stream ending: {str(item)[:80]!r} ({exc})") from None
        if ending.reason not in REASONS:
            raise ValueError(f"unknown ending reason {ending.reason[:40]!r}")
        return ending


class Endings:
    """The ring: the last ``size`` endings, oldest first, and counts per reason since start."""

    def __init__(self, size: int = RING_SIZE) -> None:
        if size < 1:
            raise ValueError(f"the ring of endings needs a size of at least 1, not {size}")
        self._ring: deque[Ending] = deque(maxlen=size)
        self._seq = 0
        #: Endings recorded since start, per reason (every reason present, 0 at first).
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)

    def record(
        self,
        reason: str,
        channels: Iterable[str],
        subject: str | None = None,
        client: str | None = None,
        at: float | None = None,
    ) -> Ending:
        """Remember that a stream ended for ``reason`` (ValueError if not in :data:`REASONS`)."""
        if reason not in REASONS:
            raise ValueError(f"unknown ending reason {reason!r}; one of {', '.join(REASONS)}")
        self._seq += 1
        ending = Ending(
            self._seq, time.time() if at is None else at, reason, tuple(channels), subject, client
        )
        self._ring.append(ending)
        self.counts[reason] += 1
        return ending

    def merge(self, endings: Iterable[Ending]) -> int:
        """Add endings heard from another relay (its ``seq`` order): those newer than the
        newest held; return how many were new."""
        added = 0
        for ending in sorted(endings, key=lambda e: e.seq):
            if ending.seq > self._seq:
                self._ring.append(ending)
                self._seq = ending.seq
                self.counts[ending.reason] += 1
                added += 1
        return added

    def last(self, n: int | None = None) -> list[Ending]:
        """The newest ``n`` endings (all held if None), oldest first."""
        held = list(self._ring)
        return held if n is None or n >= len(held) else held[len(held) - n :]

    def __len__(self) -> int:
        return len(self._ring)
