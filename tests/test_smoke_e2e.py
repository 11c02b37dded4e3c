from __future__ import annotations

import pytest

from sserelay.relay import Relay
from sserelay.testing import SseClient, notify

pytestmark = pytest.mark.e2e


async def test_raw_notify_reaches_stream(relay: Relay, dsn: str) -> None:
    client = await SseClient.open("127.0.0.1", relay.port, "/events/lobby")
    try:
        assert client.status == 200
        await client.wait_ready()
        await notify(dsn, "lobby", "Hello, world!")
        event = await client.next_event()
        assert event.data == "Hello, world!", client.seen
    finally:
        await client.close()
