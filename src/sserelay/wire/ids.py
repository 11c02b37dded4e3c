"""Event ids on the wire: ``Last-Event-ID`` in, ``id:`` out, for durable channels.

A durable channel's events have positions, integers that grow with every event: the
log's ids on PostgreSQL (``42``), stream entry ids on Redis (``1718000000000-3``, as the
integer ``ms << 64 | seq``). Each log spells and parses its own (an :class:`IdSpelling`);
this module knows what every log shares: a stream of several channels has one id, the
positions of its channels in sorted channel order joined by ``.`` (``42.0.17``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

#: Largest id of the PostgreSQL log (bigint).
MAX_ID = 2**63 - 1
#: Largest part of a Redis stream entry id ``ms-seq`` (unsigned 64 bits each).
MAX_PART = 2**64 - 1
_MASK = (1 << 64) - 1


class IdSpelling(Protocol):
    """How one log writes and reads a position."""

    def format_id(self, position: int) -> str:
        """The ``id:`` text of ``position``."""

    def parse_id(self, text: str) -> int:
        """The position ``text`` spells; ValueError (saying what is wrong, in the log's
        own words) if it spells none."""


class IntegerIds:
    """PostgreSQL's spelling: the id itself (``42``)."""

    def format_id(self, position: int) -> str:
        return str(position)

    def parse_id(self, text: str) -> int:
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"{text[:40]!r} is not an event id (a non-negative integer)")
        value = int(text)
        if value > MAX_ID:
            raise ValueError(f"event id {text[:40]!r} is out of range")
        return value


class StreamEntryIds:
    """Redis's spelling: a stream entry id ``ms-seq``."""

    def format_id(self, position: int) -> str:
        return entry_id(position)

    def parse_id(self, text: str) -> int:
        ms, dash, seq = text.partition("-")
        if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
            raise ValueError(f"{text[:40]!r} is not an event id (a stream entry id ms-seq)")
        high, low = int(ms), int(seq)
        if high > MAX_PART or low > MAX_PART:
            raise ValueError(f"event id {text[:40]!r} is out of range")
        return high << 64 | low


def entry_position(text: str | bytes) -> int:
    """A Redis stream entry id ``ms-seq`` as an integer (``ms << 64 | seq``), same order."""
    value = text.decode() if isinstance(text, bytes) else text
    ms, _, seq = value.partition("-")
    return int(ms) << 64 | int(seq or 0)


def entry_id(position: int) -> str:
    """The stream entry id of a position: the inverse of :func:`entry_position`."""
    return f"{position >> 64}-{position & _MASK}"


def parse_last_event_id(
    raw: str | None, channels: tuple[str, ...], spelling: IdSpelling
) -> dict[str, int] | None:
    """Per-channel positions from a ``Last-Event-ID``; None if absent; ValueError if
    malformed. One channel: the id itself. Several: one position per channel, in the
    order of the sorted channel names, joined with ``.`` (as :func:`composite_id` writes)."""
    if raw is None or raw == "":
        return None
    parts = raw.split(".")
    ordered = sorted(channels)
    if len(parts) != len(ordered):
        raise ValueError(f"expected {len(ordered)} position(s), got {len(parts)}")
    return {channel: spelling.parse_id(part) for channel, part in zip(ordered, parts, strict=True)}


def composite_id(spelling: IdSpelling, positions: Iterable[int]) -> str:
    """The id of a multi-channel stream's event: its channels' positions, sorted by name."""
    return ".".join(spelling.format_id(p) for p in positions)
