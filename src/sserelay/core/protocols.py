"""The small interfaces the core needs from the layers around it.

- From the HTTP fronts: a :class:`Subscriber` per open stream and the :class:`Lease`
  it was admitted with (see :mod:`sserelay.access.limits`).
- From a bus (PostgreSQL or Redis, see :mod:`sserelay.bus`): a :class:`Listener`, one
  connection that subscribes to exactly the channels asked for and hands every message
  to a :class:`BusSink`; an :class:`EventLog`, the durable log read by position; and a
  publish function. They come together as a :class:`Bus`.

Positions are integers that grow with every event of a channel; only the log knows how
they are spelled on the wire (:class:`~sserelay.wire.ids.IdSpelling`) and which one
comes right before another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..wire.envelope import Event
from ..wire.ids import IdSpelling
from ..wire.message import Message


class Subscriber(Protocol):
    """One open stream, as the core sees it."""

    #: The channels this stream receives, fixed for its lifetime.
    channels: tuple[str, ...]
    #: Channels not yet live on the bus; ``: ready`` is written when it empties.
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

    def backlog(self) -> int:
        """Bytes written to it that the client has not taken yet."""

    async def drained(self) -> None:
        """Return once the client has taken what was written (or the stream ended)."""


class Lease(Protocol):
    """What a stream was admitted with: released once, when the hub forgets the stream,
    and the monotonic time it must end by (None: never)."""

    deadline: float | None
    #: Whose stream it is, for the record of why it ended (:mod:`sserelay.core.endings`):
    #: the token's ``sub`` (None without one) and the client's address.
    sub: str | None
    peer: str | None

    def release(self) -> None:
        """Give back the stream's place in the limits."""


class BusSink(Protocol):
    """What a listener hands messages to (the core's :class:`~sserelay.core.delivery.Delivery`)."""

    def on_message(self, channel: str, payload: str) -> None:
        """A plain message on ``channel``, in the order the bus delivered them."""

    def on_durable(self, channel: str, notified: Notified | None) -> None:
        """A notification of ``channel``'s log (it came on the channel's durable name, where
        user text never goes), parsed by the bus; None if it could not be read."""

    def on_listening(self, channels: Iterable[str]) -> None:
        """``channels`` just became live on the bus (first time, or after a reconnect)."""


class Listener(Protocol):
    """One process's subscription to the bus: owns its connection and reconnects."""

    connected: bool
    #: Set once connected (cleared while disconnected).
    connected_event: asyncio.Event
    #: Seconds the latest liveness probe took, and where to report each (a histogram).
    lag: float | None
    lag_observer: Any
    #: Unexpected errors that ended a session (each logged; the listener reconnected).
    failures: int
    reconnects: int
    last_error: str | None

    @property
    def probe_overdue(self) -> bool:
        """A liveness probe is out and late: the connection may be hung."""

    def listen(self, channel: str) -> None:
        """Start receiving ``channel`` (idempotent; applied asynchronously, in batches)."""

    def unlisten(self, channel: str) -> None:
        """Stop receiving ``channel`` (idempotent; applied asynchronously)."""

    def is_listening(self, channel: str) -> bool:
        """True once messages on ``channel`` are being received."""

    @property
    def healthy(self) -> bool:
        """True while the connection is up and every wanted channel is subscribed."""

    def status(self) -> dict[str, Any]:
        """A small JSON-able description (for the detailed health view)."""

    async def run(self) -> None:
        """Connect, subscribe and deliver until cancelled, reconnecting as needed; an
        unexpected error is logged and counted, and the listener reconnects."""


class LogRow(Protocol):
    """One event read from a log, oldest first."""

    @property
    def id(self) -> int:
        """The event's position in its channel's log."""

    @property
    def event(self) -> str | None: ...

    @property
    def data(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Notified:
    """A durable notification: the event's position, the position before it, and the
    event itself when it fitted in the notification (``data`` None: read it from the log)."""

    seq: int
    prev: int
    event: str | None
    data: str | None


class EventLog(IdSpelling, Protocol):
    """A durable log of events per channel: PostgreSQL's ``sserelay.events`` (ids 1, 2,
    3, ...) or one Redis stream per channel (entry ids ``ms-seq``)."""

    #: Most events one :meth:`read_after` returns.
    batch: int
    #: Reads sent to the log, and reads answered by one already in flight (metrics).
    queries: int
    shared: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def installed(self) -> bool:
        """Whether durable channels are available (the schema is installed)."""

    async def heads(self, channels: Sequence[str]) -> dict[str, int]:
        """The last position handed out on each channel (0: none yet), in one read."""

    async def read_after(
        self, channel: str, after: int, *, shared: bool = True
    ) -> Sequence[LogRow]:
        """Up to :attr:`batch` events after position ``after``, oldest first. ``shared``:
        may join an identical read in flight (whose snapshot may be older)."""

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        """If events after ``after`` (up to ``live``) were deleted by retention, the position
        to resume from (the last deleted one, or ``live``); None if nothing is lost."""

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        """The position (at least ``floor``) after which at most ``n`` events lead to ``live``."""

    async def prune(self, max_age: Any, max_count: int | None) -> int:
        """Apply retention (``max_age`` a timedelta); return how many events went."""

    def previous(self, row: LogRow) -> int:
        """The position right before ``row`` (PostgreSQL: ``id - 1``)."""


#: Publish one message: durable (True), raw (False) or as the bus decides (None);
#: returns the event's SSE id, or None if it went raw.
PublishFn = Callable[[Message, "bool | None"], Awaitable["int | str | None"]]


@dataclass
class Bus:
    """What a relay holds of its bus."""

    #: ``postgres`` or ``redis``: for logs, metrics and health.
    kind: str
    listener: Listener
    log: EventLog
    publish: PublishFn
    #: The largest raw (non-durable) payload the bus takes, and its name in messages.
    raw_limit: int
