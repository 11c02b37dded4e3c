"""What a relay knows of every relay on its bus (itself included): the latest snapshot of
each, forgotten when a relay has not been heard from for a while, and the endings each
announced, kept in a ring per relay. :meth:`Peers.view` merges them into what the
operator's page shows. Pure logic: the snapshots arrive as the bus's raw payloads.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from ..core.endings import REASONS, RING_SIZE, Ending, Endings
from .snapshot import TOP, VERSION, top

log = logging.getLogger("sserelay.admin")

#: Relays kept at most (a flood of made-up ids cannot grow the table past it).
MAX_RELAYS = 256
#: Longest relay id kept.
MAX_ID = 120


class Peers:
    """The latest snapshot per relay id, and each relay's endings."""

    def __init__(self, own_id: str, expiry: float) -> None:
        self.own_id = own_id
        #: Seconds after which a relay not heard from is forgotten.
        self.expiry = expiry
        #: Relay id -> (monotonic time received, snapshot).
        self._latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self._endings: dict[str, Endings] = {}
        #: Messages on the control channel that were not a snapshot we can read.
        self.unreadable = 0

    def receive(self, payload: str, now: float) -> str | None:
        """Take a snapshot as the bus carried it (the envelope ``{"data": snapshot}``);
        return the relay's id, or None if it was not one (counted, logged at DEBUG).
        Our own echo is ignored: :meth:`own` keeps ours."""
        try:
            message = json.loads(payload)
            snapshot = message["data"]
            relay = snapshot["relay"]
            if snapshot.get("v") != VERSION or not isinstance(relay, str) or len(relay) > MAX_ID:
                raise ValueError("not a snapshot of this version")
            endings = [Ending.from_compact(item) for item in snapshot.get("endings", ())]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.unreadable += 1
            log.debug("control message that is no snapshot: %s", exc)
            return None
        if relay == self.own_id:
            return relay
        if relay not in self._latest and len(self._latest) >= MAX_RELAYS:
            self.unreadable += 1
            return None
        self.store(relay, snapshot, endings, now)
        return relay

    def own(self, snapshot: dict[str, Any], now: float) -> None:
        """This relay's snapshot (its endings are read from its own ring by the view)."""
        self._latest[self.own_id] = (now, snapshot)

    def store(
        self, relay: str, snapshot: dict[str, Any], endings: list[Ending], now: float
    ) -> None:
        self._latest[relay] = (now, snapshot)
        ring = self._endings.get(relay)
        if ring is None:
            ring = self._endings[relay] = Endings(RING_SIZE)
        ring.merge(endings)

    def expire(self, now: float) -> list[str]:
        """Forget the relays not heard from within :attr:`expiry`; return their ids."""
        gone = [r for r, (at, _) in self._latest.items() if now - at > self.expiry]
        for relay in gone:
            del self._latest[relay]
            self._endings.pop(relay, None)
        return gone

    def relays(self) -> list[dict[str, Any]]:
        """The latest snapshot of each relay, by id (without their endings)."""
        return [
            {k: v for k, v in snap.items() if k != "endings"}
            for _, (_, snap) in sorted(self._latest.items())
        ]

    def view(self, own_endings: list[Ending], now: float, limit: int = RING_SIZE) -> dict[str, Any]:
        """What the operator's page shows: every relay, the totals, the top channels
        across relays (each relay's top lists summed: a channel outside every relay's top
        list is not counted), the endings counted by reason since each relay started, and
        the newest ``limit`` endings of all, newest first."""
        relays = self.relays()
        totals: Counter[str] = Counter()
        rates: Counter[str] = Counter()
        subscribers: Counter[str] = Counter()
        events: Counter[str] = Counter()
        ended: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        for snap in relays:
            ended.update(snap.get("ended", {}))
            totals.update(streams=snap.get("streams", 0), channels=snap.get("channels", 0))
            rates.update(snap.get("rates", {}))
            for channel, count in snap.get("top_subscribers", ()):
                subscribers[channel] += count
            for channel, rate in snap.get("top_rates", ()):
                events[channel] += rate
        endings = [(self.own_id, e) for e in own_endings]
        for relay, ring in self._endings.items():
            if relay in self._latest:
                endings += [(relay, e) for e in ring.last()]
        endings.sort(key=lambda pair: pair[1].at, reverse=True)
        return {
            "at": now,
            "relay": self.own_id,
            "relays": relays,
            "totals": dict(totals),
            "rates": {k: round(v, 2) for k, v in rates.items()},
            "top_subscribers": top(subscribers.items(), TOP),
            "top_rates": [[c, round(r, 2)] for c, r in top(events.items(), TOP)],
            "ended": dict(ended),
            "endings": [[relay, *e.compact()[1:]] for relay, e in endings[:limit]],
        }
