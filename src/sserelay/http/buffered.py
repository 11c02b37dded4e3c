"""A stream for the fronts that send with ``await`` (the ASGI app, the Django view).

The hub's fan-out loop cannot await: it appends an event's frame to this stream's buffer
and wakes the request's coroutine, which sends everything accumulated in one message
(:meth:`BufferedStream.batches`). The server does the HTTP framing, so the buffer holds
``event.frame``, not ``event.chunked``.

Backpressure: a live stream counts as slow when a send is blocked (the server applies
backpressure to a client that does not read) and its unsent bytes pass ``limit``; bytes
that only wait for the next turn of the event loop are not the client's fault, so a
burst dispatched in one loop iteration does not drop every stream. A stream that is
catching up never gets that far: the catch-up waits for :meth:`BufferedStream.drained`
whenever :meth:`BufferedStream.backlog` passes half the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..wire.envelope import Event


class BufferedStream:
    """One stream, as the hub sees it (a :class:`~sserelay.core.protocols.Subscriber`)."""

    def __init__(self, channels: tuple[str, ...], *, limit: int) -> None:
        self.channels = channels
        self.pending: set[str] = set()
        self.next_ping = 0.0
        self.id_key: tuple[str, ...] | None = None
        self.limit = limit
        #: The response is complete, or the client left: nothing more will be sent.
        self.finished = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._in_flight = 0  # bytes handed to a send() that has not returned
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._sending = False
        self._ending = False  # closed or dropped by the hub: end the response
        self._gone = False  # the client disconnected

    # -- core.protocols.Subscriber ---------------------------------------------------

    def deliver(self, event: Event) -> bool:
        if self._ending:
            return True
        frame = event.frame
        self._add(frame)
        # As in the native server, a caught-up client may take one event bigger than the bound.
        return not self._sending or self._size <= self.limit or self._size <= len(frame)

    def write(self, data: bytes) -> None:
        if not self._ending and data:
            self._add(data)

    def _add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._drained.clear()
        self._wake.set()

    def close(self, farewell: bytes = b"") -> None:
        self.write(farewell)
        self._ending = True
        self._wake.set()

    def abort(self) -> None:
        """Dropped as slow: discard what is unsent and end the response.

        A front that sends with ``await`` cannot reset a connection: the end goes out
        once the server's buffer drains, or the server notices the client is gone.
        """
        self._chunks.clear()
        self._size = 0
        self._ending = True
        self._wake.set()
        self._drained.set()

    def backlog(self) -> int:
        return self._size + self._in_flight

    async def drained(self) -> None:
        await self._drained.wait()

    # -- the request's side ----------------------------------------------------------

    @property
    def gone(self) -> bool:
        """The client left."""
        return self._gone

    def disconnected(self) -> None:
        """The client went away: stop sending."""
        self._gone = True
        self._wake.set()
        self._drained.set()

    def take(self) -> bytes:
        """Everything buffered, emptying the buffer."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def batches(self) -> AsyncIterator[tuple[bytes, bool]]:
        """(bytes, ending) as the hub writes them, until it ends the stream (the last
        batch has ``ending`` true, maybe no bytes) or the client leaves. While the consumer
        holds a batch the stream counts as sending (see the module docstring)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._gone:
                    self.finished = True
                    return
                data = self.take()
                ending = self._ending
                if data or ending:
                    self._sending = True
                    self._in_flight = len(data)
                    try:
                        yield data, ending
                    finally:
                        self._sending = False
                        self._in_flight = 0
                if not self._size:
                    self._drained.set()
                if ending:
                    self.finished = True
                    return
        finally:
            self._drained.set()  # nobody waits for a stream that no longer sends

    async def pump(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Send what the hub writes, as ASGI body messages, until the hub ends the stream
        or the client leaves."""
        async for data, ending in self.batches():
            await send({"type": "http.response.body", "body": data, "more_body": not ending})
