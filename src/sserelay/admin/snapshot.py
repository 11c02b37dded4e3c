"""One relay's snapshot: its stats, rates, top channels, state, limits and recent stream
endings, as compact JSON that fits in one bus message (PostgreSQL's NOTIFY takes fewer
than 8000 bytes).

:class:`Sampler` turns the relay's plain counters into rates between two snapshots;
:func:`fit` drops the oldest endings (then shortens the top lists) until the snapshot
fits. Both are pure logic; :mod:`sserelay.admin.operator` reads the relay.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.endings import Ending

#: A snapshot's version: a relay ignores the snapshots of another format.
VERSION = 1
#: Channels in each top list.
TOP = 10
#: Most endings one snapshot carries (fewer if they do not fit).
SNAPSHOT_ENDINGS = 40
#: A snapshot's JSON stays under this many bytes (NOTIFY: under 8000, with the envelope).
SNAPSHOT_BYTES = 7000


def compact_json(value: Any) -> str:
    """JSON as the bus carries it (no spaces, UTF-8 as is)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def top(items: Iterable[tuple[str, float]], n: int = TOP) -> list[list[Any]]:
    """The ``n`` largest ``(channel, value)`` pairs, largest first, as JSON pairs
    (ties by name, so the list does not flicker). O(items log n)."""
    best = heapq.nsmallest(n, items, key=lambda item: (-item[1], item[0]))
    return [[channel, value] for channel, value in best if value > 0]


class Sampler:
    """Rates from counters that only grow: each :meth:`rates` call compares with the last.
    A counter that went down (a restart) counts from zero."""

    def __init__(self) -> None:
        self._at: float | None = None
        self._totals: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    def rates(
        self, now: float, totals: Mapping[str, int], channel_events: Mapping[str, int]
    ) -> tuple[dict[str, float], list[list[Any]]]:
        """Per second since the last call: each of ``totals``, and the top channels by
        events (``channel_events``: events fanned out per channel so far)."""
        elapsed = None if self._at is None else now - self._at
        rates: dict[str, float] = {}
        per_channel: list[tuple[str, float]] = []
        if elapsed is not None and elapsed > 0:
            for name, value in totals.items():
                before = self._totals.get(name, 0)
                rates[name] = round(max(value - before, 0) / elapsed if value >= before else 0, 2)
            for channel, value in channel_events.items():
                before = self._channels.get(channel, 0)
                gained = value - before if value >= before else value
                if gained > 0:
                    per_channel.append((channel, round(gained / elapsed, 2)))
        else:
            rates = dict.fromkeys(totals, 0.0)
        self._at = now
        self._totals = dict(totals)
        self._channels = dict(channel_events)
        return rates, top(per_channel)


def fit(snapshot: dict[str, Any], endings: list[Ending], limit: int = SNAPSHOT_BYTES) -> str:
    """``snapshot`` with as many of the newest ``endings`` (at most
    :data:`SNAPSHOT_ENDINGS`) as fit in ``limit`` bytes of JSON; if even none fit, the
    top lists are shortened, then the last error cut. Always returns JSON under ``limit``
    (ValueError if the bare snapshot cannot be made to fit)."""
    newest = endings[-SNAPSHOT_ENDINGS:]
    count = len(newest)
    while True:
        snapshot["endings"] = [e.compact() for e in newest[len(newest) - count :]] if count else []
        text = compact_json(snapshot)
        if len(text.encode()) <= limit:
            return text
        if count == 0:
            break
        count //= 2
    for shorter in (5, 2, 0):
        for key in ("top_subscribers", "top_rates"):
            snapshot[key] = snapshot.get(key, [])[:shorter]
        listener = snapshot.get("listener")
        if isinstance(listener, dict) and shorter == 0:
            listener["last_error"] = None
        if isinstance(snapshot.get("capture"), dict) and shorter == 0:
            snapshot["capture"] = {"error": "(cut: the snapshot was too large)"}
        text = compact_json(snapshot)
        if len(text.encode()) <= limit:
            return text
    raise ValueError(f"a snapshot of {len(text.encode())} bytes cannot fit in {limit}")
