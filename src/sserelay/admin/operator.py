"""The operator's page of one relay: its snapshots on the bus, what it heard of the others,
and the answers to ``GET /admin`` and ``GET /admin/stream`` (docs/admin.md).

Every ``admin_interval`` seconds (jittered) a supervised service (``admin``) takes this
relay's snapshot, publishes it on the control channel :data:`CONTROL` (a plain
notification: PostgreSQL ``NOTIFY``, Redis ``PUBLISH``), forgets the relays not heard
from, and, if a page is open, renders the view of all relays once and writes it to every
page's stream (the in-process channel :data:`VIEW`, fed through the hub like any other).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

from .. import jitter
from ..access.operator import OperatorAuth
from ..core.control import ControlSink
from ..errors import SseRelayError
from ..wire.envelope import Event
from ..wire.message import Message
from . import page
from .peers import MAX_ID, Peers
from .snapshot import SNAPSHOT_BYTES, VERSION, Sampler, compact_json, fit, top

if TYPE_CHECKING:
    from ..relay import Relay

log = logging.getLogger("sserelay.admin")

#: The bus channel of the relays' snapshots (reserved: no client may read or publish it).
CONTROL = "sserelay.admin"
#: The in-process channel of the pages' streams.
VIEW = "sserelay.admin.view"
#: The settings shown as "the limits in force".
LIMITS = (
    "max_streams",
    "max_streams_per_client",
    "max_streams_per_subject",
    "max_distinct_channels",
    "max_channels_per_client",
    "max_channels_per_stream",
    "max_client_buffer",
    "max_stream_lifetime",
    "drain_timeout",
    "max_replay",
    "max_publish_bytes",
    "publish_rate",
    "publish_burst",
    "heartbeat",
)


def relay_id() -> str:
    """This process's name among the relays: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"[-MAX_ID:]


class Operator:
    """See the module docstring. Built by the relay when ``settings.admin`` is on."""

    #: The channel of the pages' streams (the fronts open them on it).
    channel = VIEW

    def __init__(self, relay: Relay, sink: ControlSink) -> None:
        self.relay = relay
        settings = relay.settings
        self.id = relay_id()
        self.interval = settings.admin_interval
        self.auth = OperatorAuth(
            settings.admin_user,
            settings.admin_password,
            relay.policy.verifier,
            settings.jwt_secret,
        )
        self.peers = Peers(self.id, expiry=max(3 * self.interval, 10.0))
        self._sampler = Sampler()
        self._limit = min(SNAPSHOT_BYTES, relay.bus.raw_limit - 100)
        #: Snapshots published, and publishes that failed (the bus was down).
        self.announced = 0
        self.failures = 0
        #: Updates written to the pages' own streams (left out of the deliveries shown).
        self._page_deliveries = 0
        sink.handlers[CONTROL] = self._heard

    def start(self) -> None:
        """Listen on the control channel and start the service (with the relay's)."""
        self.relay.listener.listen(CONTROL)
        self.relay.tasks.service("admin", self.run)

    def _heard(self, payload: str) -> None:
        self.peers.receive(payload, time.monotonic())

    # -- the service ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval * jitter.uniform(0.9, 1.1))

    async def tick(self) -> None:
        """One round: snapshot, announce, expire, update the open pages."""
        now = time.monotonic()
        snapshot = self.snapshot()
        fit(snapshot, self.relay.hub.endings.last(), self._limit)
        self.peers.own(snapshot, now)
        await self._announce(snapshot)
        self.peers.expire(now)
        hub = self.relay.hub
        pages = sum(1 for _ in hub.members(VIEW))
        if pages:
            hub.publish(Event(VIEW, page.main(self.view()), event="view"))
            self._page_deliveries += pages  # not the clients' deliveries: left out

    async def _announce(self, snapshot: dict[str, Any]) -> None:
        message = Message(CONTROL, snapshot, None, None, None, True)
        try:
            await self.relay.bus.publish(message, False)
        except SseRelayError as exc:  # the bus is down: the listener says so; next time
            self.failures += 1
            if self.failures == 1 or self.announced:
                log.warning("announcing this relay's snapshot failed: %s", exc)
            self.announced = 0
            return
        self.announced += 1

    # -- what is shown --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This relay now, as :mod:`sserelay.admin.snapshot` describes (no endings yet)."""
        relay, hub = self.relay, self.relay.hub
        pages = sum(1 for _ in hub.members(VIEW))
        totals = {
            "deliveries": hub.deliveries - self._page_deliveries,
            "events": relay.delivery.events_received,
            "slow": hub.slow_dropped,
            "opened": hub.streams_opened,
        }
        events = {c: n for c, n in hub.channel_events.items() if c != VIEW}
        rates, top_rates = self._sampler.rates(time.monotonic(), totals, events)
        listener = relay.listener.status()
        last_error = listener.get("last_error")
        settings = relay.settings
        return {
            "v": VERSION,
            "relay": self.id,
            "at": round(time.time(), 3),
            "started": round(relay.started, 3),
            "bus": relay.bus.kind,
            "problem": relay.problem(),
            "streams": hub.stream_count - pages,
            "channels": hub.channel_count - (1 if pages else 0),
            "pages": pages,
            "totals": totals,
            "rates": rates,
            "ended": dict(hub.endings.counts),
            "top_subscribers": top(hub.member_counts()),
            "top_rates": top_rates,
            "listener": {
                "connected": listener.get("connected"),
                "connects": listener.get("connects"),
                "failures": listener.get("failures"),
                "last_error": None if last_error is None else str(last_error)[:200],
                "lag": relay.listener.lag,
            },
            "capture": None if relay.capturer is None else relay.capturer.status(),
            "limits": {name: getattr(settings, name) for name in LIMITS},
        }

    def view(self) -> dict[str, Any]:
        """Every relay heard from, merged (see :meth:`Peers.view`)."""
        return self.peers.view(self.relay.hub.endings.last(), time.time())

    def page(self, *, secure: bool = False) -> tuple[list[tuple[str, str]], bytes]:
        """``GET /admin``'s headers and body (the caller admitted the request; ``secure``:
        it came over HTTPS, as a proxy says)."""
        nonce = secrets.token_urlsafe(16)
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            (
                "Content-Security-Policy",
                f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'",
            ),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Set-Cookie", self.auth.set_cookie(secure=secure)),
        ]
        return headers, page.page(self.view(), nonce).encode()

    def json(self) -> tuple[list[tuple[str, str]], bytes]:
        """``GET /admin?format=json``: the same view as data."""
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return headers, compact_json(self.view()).encode() + b"\n"
