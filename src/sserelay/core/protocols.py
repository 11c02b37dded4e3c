"""The broker interface: what the hub needs from the bus (PostgreSQL or Redis).

A broker holds the relay's one connection to the bus, subscribes to exactly the
channels the hub asks for, and hands every message to the hub. It owns its
reconnection: the hub only sees ``healthy`` go false and true again.

Durable channels need a second, separate ability, :class:`EventLog`: reading a
channel's log of events by position (PostgreSQL's ``sserelay.events`` table, or
one Redis stream per channel). Positions are integers that grow with every event
of a channel; only the log knows how they are spelled on the wire and which
position comes right before another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

#: Called with (channel, payload) for every message, in the order the bus delivered them.
OnMessage = Callable[[str, str], None]
#: Called with the channels that just became live (subscribed on the bus).
OnListening = Callable[[Iterable[str]], None]


class Broker(Protocol):
    """One process's subscription to the bus."""

    def listen(self, channel: str) -> None:
        """Start receiving ``channel`` (idempotent; applied asynchronously)."""

    def unlisten(self, channel: str) -> None:
        """Stop receiving ``channel`` (idempotent; applied asynchronously)."""

    def is_listening(self, channel: str) -> bool:
        """True once messages on ``channel`` are being received."""

    @property
    def healthy(self) -> bool:
        """True while the connection is up and every wanted channel is subscribed."""

    def status(self) -> dict[str, Any]:
        """A small JSON-able description for ``/healthz``."""

    async def run(self) -> None:
        """Connect, subscribe and deliver until cancelled, reconnecting as needed."""


class LogRow(Protocol):
    """One event read from a log, oldest first."""

    @property
    def id(self) -> int:
        """The event's position in its channel's log."""

    @property
    def event(self) -> str | None: ...

    @property
    def data(self) -> str: ...


class EventLog(Protocol):
    """A durable log of events per channel, as :class:`~sserelay.replay.Replay` reads it.

    Implemented by :class:`sserelay.replay.LogReader` (PostgreSQL, ids 1, 2, 3, ...)
    and :class:`sserelay.redis_log.RedisLog` (Redis Streams, entry ids ``ms-seq``).
    """

    #: Most events one :meth:`read_after` returns.
    batch: int
    #: Reads sent to the log, and reads answered by one already in flight (metrics).
    queries: int
    shared: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def installed(self) -> bool:
        """Whether durable channels are available (the schema is installed)."""

    async def head(self, channel: str) -> int:
        """The last position handed out on ``channel`` (0: none yet)."""

    async def read_after(
        self, channel: str, after: int, *, shared: bool = True
    ) -> Sequence[LogRow]:
        """Up to :attr:`batch` events after position ``after``, oldest first."""

    async def gap_after(self, channel: str, after: int, live: int) -> int | None:
        """If events after ``after`` (up to ``live``) were deleted by retention, the position
        to resume from (the last deleted one, or ``live``); None if nothing is lost."""

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        """The position (at least ``floor``) after which at most ``n`` events lead to ``live``."""

    async def prune(self, max_age: Any, max_count: int | None) -> int:
        """Apply retention: delete events older than ``max_age`` (a timedelta) and/or
        beyond the newest ``max_count`` of each channel; return how many went."""

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        timeout: float = 5.0,
    ) -> int | str | None:
        """Publish as :func:`sserelay.apublish` does (durable where the log is available,
        raw if ``id`` is given); return the event's id as its SSE ``id:`` (None if raw)."""

    def previous(self, row: LogRow) -> int:
        """The position right before ``row`` (PostgreSQL: ``id - 1``)."""

    def notified(self, obj: dict[str, Any]) -> tuple[int, int] | None:
        """(position, previous position) of a durable notification, None if it is not one."""

    def format_id(self, position: int) -> str:
        """The SSE ``id:`` of a position."""
