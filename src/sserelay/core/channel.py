"""What the relay knows of one channel with subscribers, and the events it makes itself
(an event read from the log, the ``missed`` event)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from ..wire.envelope import Event
from ..wire.ids import IdSpelling
from .protocols import LogRow, Notified

#: The event a client gets when events it asked for are gone (retention) or too many.
MISSED_EVENT = "missed"


@dataclass
class ChannelState:
    """What the relay knows of one channel with subscribers."""

    #: Position of the last event delivered live; None until the log's head was read.
    position: int | None = None
    #: Durable notifications waiting behind a head read or a fill.
    queue: list[Notified] = field(default_factory=list)
    filling: bool = False
    #: A fill was asked for while one ran (the subscription took effect again): it must
    #: read once more before it ends.
    again: bool = False
    #: Set once the position is known.
    known: asyncio.Event = field(default_factory=asyncio.Event)
    #: Catch-ups waiting for the position to reach theirs: (position, future).
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


@dataclass
class Seam:
    """A catching-up stream's live events, kept until it joins the fan-out."""

    events: list[Event] = field(default_factory=list)
    size: int = 0


def row_event(spelling: IdSpelling, channel: str, row: LogRow) -> Event:
    """The event of a row read from the log."""
    return Event(channel, row.data, event=row.event, id=spelling.format_id(row.id), seq=row.id)


def missed_event(
    spelling: IdSpelling, channel: str, after: int, resumed_at: int, reason: str
) -> Event:
    """The ``missed`` event: positions as the log spells ids (numbers on PostgreSQL, entry
    id strings on Redis)."""

    def spelled(position: int) -> int | str:
        text = spelling.format_id(position)
        return int(text) if text.isdigit() else text

    data = json.dumps(
        {
            "channel": channel,
            "after": spelled(after),
            "resumed_at": spelled(resumed_at),
            "reason": reason,
        }
    )
    return Event(channel, data, event=MISSED_EVENT)
