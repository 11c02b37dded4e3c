"""Helpers for testing code that uses sserelay (and for sserelay's own tests).

- :class:`SseClient`: a small raw-socket SSE client that reads what a relay
  really sends (status, headers, chunked framing, events and comments).
- :func:`running_relay`: an in-process relay on a free port, shut down on exit.
- :func:`notify`: a raw ``pg_notify`` from a separate connection.
- :func:`raw_request`: send raw bytes, read a whole (non-streaming) response.
- :func:`wait_until`: poll a condition with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bus.postgres.admin import notify, temporary_database
from .config import Settings
from .relay import Relay

__all__ = [
    "RawResponse",
    "SseClient",
    "SseMessage",
    "StreamClosed",
    "notify",
    "parse_block",
    "raw_request",
    "running_relay",
    "showing_frames",
    "temporary_database",
    "wait_until",
]


@dataclass
class SseMessage:
    """One parsed SSE block: an event, or comments only (``comments`` set, ``is_event`` False)."""

    data: str = ""
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    is_event: bool = False


class StreamClosed(Exception):
    """The server closed the stream."""


class SseClient:
    """A raw-socket SSE client: ``await SseClient.open(url_base, path)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self._buffer = ""
        self.seen: list[SseMessage] = []  # everything read so far, for failure messages

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> SseClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        client = cls(reader, writer)
        await asyncio.wait_for(client._read_head(), timeout)
        return client

    async def _read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"

    async def body(self, timeout: float = 10.0) -> bytes:
        """The whole body of a non-streaming response."""
        length = int(self.headers.get("content-length", "0"))
        return await asyncio.wait_for(self.reader.readexactly(length), timeout)

    async def _read_text(self) -> str:
        if self.chunked:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.strip(), 16)
            if size == 0:
                raise StreamClosed("last chunk received")
            data = await self.reader.readexactly(size + 2)
            return data[:-2].decode("utf-8")
        data = await self.reader.read(65536)
        if not data:
            raise StreamClosed("connection closed")
        return data.decode("utf-8")

    async def next_message(self, timeout: float = 10.0) -> SseMessage:
        """The next block (event or comment-only), parsed per the WHATWG rules we use."""
        async with asyncio.timeout(timeout):
            while "\n\n" not in self._buffer:
                try:
                    self._buffer += await self._read_text()
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    raise StreamClosed(str(exc)) from exc
        block, self._buffer = self._buffer.split("\n\n", 1)
        message = parse_block(block)
        self.seen.append(message)
        return message

    async def next_event(self, timeout: float = 10.0) -> SseMessage:
        """The next real event, skipping comments and bare ``retry:`` blocks."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message(timeout)
                if message.is_event:
                    return message

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait for the relay's ``: ready`` comment (the stream's channels are live)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message(timeout)
                if "ready" in message.comments:
                    return
                if message.is_event:
                    raise AssertionError(f"event before ready: {message}")

    @classmethod
    async def open_raw(
        cls, host: str, port: int, request: bytes, *, timeout: float = 10.0
    ) -> SseClient:
        """Send ``request`` verbatim (any version, headers, trailing bytes); read the head."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(request)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client._read_head(), timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Read (and record) messages until the server ends the stream."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(StreamClosed):
                while True:
                    await self.next_message(timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def parse_block(block: str) -> SseMessage:
    message = SseMessage()
    data: list[str] = []
    for line in block.split("\n"):
        if line.startswith(":"):
            message.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value
        elif name == "retry":
            message.retry = int(value)
    if data:
        message.is_event = True
        message.data = "\n".join(data)
    return message


@contextlib.asynccontextmanager
async def running_relay(dsn: str | None, **settings: Any) -> AsyncIterator[Relay]:
    """An in-process relay on 127.0.0.1 and a free port; waits until its listener is up.

    ``dsn`` None with ``redis_url=...`` in ``settings``: a relay on Redis.
    """
    settings.setdefault("port", 0)
    relay = Relay(Settings(**settings), dsn=dsn)
    await relay.start()
    try:
        async with asyncio.timeout(30):
            await relay.listener.connected_event.wait()
        yield relay
    finally:
        await relay.shutdown()


@dataclass
class RawResponse:
    """A complete, non-streaming HTTP response as :func:`raw_request` read it."""

    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(
    host: str, port: int, request: bytes | Sequence[bytes], *, timeout: float = 10.0
) -> RawResponse:
    """Send raw bytes (several writes if ``request`` is a sequence) and read to EOF.

    For answers the relay closes after (errors, ``/healthz``, ``/metrics``), not for streams.
    """
    parts = [request] if isinstance(request, bytes) else list(request)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            with contextlib.suppress(ConnectionError):  # the server may answer and close early
                for part in parts:
                    writer.write(part)
                    await writer.drain()
            raw = b""
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    raw += chunk
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {raw[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body, raw)


@contextlib.contextmanager
def showing_frames(*clients: SseClient) -> Iterator[None]:
    """Turn any failure inside the block into an AssertionError listing the frames seen.

    A streaming test that times out or trips over a closed stream then says what it got.
    """
    try:
        yield
    except Exception as exc:
        seen = "\n".join(f"  client {i}: {client.seen!r}" for i, client in enumerate(clients))
        raise AssertionError(f"{type(exc).__name__}: {exc}\nframes seen:\n{seen}") from exc


async def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> None:
    """Poll ``condition`` (sync, or returning an awaitable) until it is truthy, or fail.

    The way to wait for state with no readiness event of its own, without sleeping blindly.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"condition not met within {timeout:g}s: {text}")
        await asyncio.sleep(interval)
