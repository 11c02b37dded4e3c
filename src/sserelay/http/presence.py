"""``GET /presence/{channel}``: who is subscribed to a presence channel, across all relays
(docs/presence.md).

:func:`check` runs in :func:`~sserelay.http.front.dispatch` (no await): the channel must
be a presence channel (else 404), and the request's token must allow reading it, by the
rules of subscribing (public channels need none). The front then awaits :func:`answer`,
one read of the bus's presence rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import HttpError, SseRelayError
from .request import Request
from .responses import cors_headers, error_body
from .routes import PresenceRoute

if TYPE_CHECKING:
    from ..relay import Relay

log = logging.getLogger("sserelay.http")

#: Seconds a read of the presence rows may take before the answer is a 503.
READ_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """An authorised ``GET /presence/{channel}``: the front awaits :func:`answer`."""

    channel: str
    #: CORS headers for the answer.
    headers: list[tuple[str, str]]


def check(relay: Relay, request: Request, target: PresenceRoute) -> Lookup:
    """The lookup ``request`` may make, or HttpError (404 not a presence channel, 401/403)."""
    channel = target.channel
    if relay.presence is None or not relay.presence.tracker.enabled(channel):
        raise HttpError(
            404,
            f"presence is not enabled for channel {channel[:80]!r}; the relay keeps it for "
            "the channels of its presence setting (serve --presence PATTERN)",
        )
    relay.access.authorise((channel,), request.headers, target.query, request.client)
    return Lookup(channel, cors_headers(request.origin, relay.settings.allowed_origins))


async def answer(relay: Relay, lookup: Lookup) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body): the channel's presence as JSON, or a 503 if the bus
    cannot say."""
    assert relay.presence is not None  # checked by check()
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-cache")]
    headers += lookup.headers
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            view = await relay.presence.read(lookup.channel)
    except (SseRelayError, TimeoutError) as exc:
        log.warning("presence of %r not read: %s", lookup.channel[:80], exc or "timeout")
        relay.count_rejected(503)
        return 503, [*headers, ("Retry-After", "1")], error_body("presence cannot be read now")
    return 200, headers, json.dumps(view.as_dict()).encode() + b"\n"
