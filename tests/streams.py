"""Streams for tests: :class:`FakeStream`, a hub subscriber with no socket (to drive the hub
synchronously), and :class:`Feed`, a real stream read in the background."""

from __future__ import annotations

import asyncio
import contextlib

from sserelay.core.hub import READY
from sserelay.testing import SseClient, SseMessage, StreamClosed
from sserelay.wire.envelope import Event


class FakeStream:
    """A hub subscriber that records what the hub did to it."""

    def __init__(self, *channels: str) -> None:
        self.channels = channels
        self.pending: set[str] = set()
        self.next_ping = 0.0
        self.id_key: tuple[str, ...] | None = None
        #: Every event delivered, in order.
        self.events: list[Event] = []
        #: Every byte string it was sent (event frames, comments, the farewell), in order.
        self.frames: list[bytes] = []
        #: The farewell it was closed with (``b"<aborted>"`` if dropped); None while open.
        self.closed_with: bytes | None = None

    @property
    def ready(self) -> bool:
        return READY in self.frames

    def deliver(self, event: Event) -> bool:
        self.events.append(event)
        self.frames.append(event.frame)
        return True

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def close(self, farewell: bytes = b"") -> None:
        self.frames.append(farewell)
        self.closed_with = farewell

    def abort(self) -> None:
        self.closed_with = b"<aborted>"

    def backlog(self) -> int:
        return 0

    async def drained(self) -> None:
        return None


class Owner:
    """A hub's channel owner for pure-logic tests: every channel is live at once."""

    def __init__(self) -> None:
        self.first: list[str] = []
        self.last: list[str] = []
        self.gone: list[FakeStream] = []

    def first_member(self, channel: str) -> None:
        self.first.append(channel)

    def last_member(self, channel: str) -> None:
        self.last.append(channel)

    def is_live(self, channel: str) -> bool:
        return True

    def composite_id(self, key: tuple[str, ...]) -> str:
        return ".".join("0" for _ in key)

    def stream_gone(self, sub: object) -> None:
        self.gone.append(sub)  # type: ignore[arg-type]  # any subscriber


class Feed:
    """A stream read in the background: every event kept."""

    def __init__(self, client: SseClient) -> None:
        self.client = client
        self.events: list[SseMessage] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(StreamClosed):
            while True:
                self.events.append(await self.client.next_event(timeout=3600))

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamClosed):
            await self.task
        await self.client.close()
