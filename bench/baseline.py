"""The baseline: the smallest SSE fan-out server the design notes describe.

One LISTEN connection (psycopg, autocommit) read straight from libpq when its
socket is readable; one asyncio ``Protocol`` per client; each notification is
encoded once (SSE frame inside one HTTP chunk) and written with
``transport.write`` to every subscriber of its channel in one loop. Nothing
else: no slow-client check, no heartbeats, no replay, no metrics. It is what
sserelay's fan-out is measured against.

It speaks enough HTTP for ``bench/loadgen.py``: ``GET /events/<channel>`` or
``GET /<channel>`` answers 200 with a chunked ``text/event-stream``, then
``: ready`` once the channel is LISTENed. Payloads that are a JSON object with a
``data`` key send that value (as sserelay does); anything else is sent verbatim.

    python bench/baseline.py --port 8002 --dsn postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
from typing import Any

import psycopg
from psycopg import sql

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
LINE_END = re.compile(r"\r\n|\r|\n")


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


READY = chunk(b": ready\n\n")


def encode(payload: str) -> bytes:
    """The notification as one chunk-framed SSE event."""
    data = payload
    if payload.startswith("{"):
        with contextlib.suppress(ValueError):
            obj = json.loads(payload)
            if isinstance(obj, dict) and "data" in obj:
                value = obj["data"]
                data = value if isinstance(value, str) else json.dumps(value)
    lines = "".join(f"data: {line}\n" for line in LINE_END.split(data))
    return chunk((lines + "\n").encode())


class Fanout:
    """Channel -> subscribed transports, and the one LISTEN connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # Dicts, not sets: written in subscription order, as sserelay's hub does, so the
        # two differ only in the work per delivery.
        self.channels: dict[str, dict[asyncio.Transport, None]] = {}
        self.listening: set[str] = set()
        self.waiting: dict[str, list[asyncio.Transport]] = {}
        self.wanted: asyncio.Queue[str] = asyncio.Queue()

    def subscribe(self, channel: str, transport: asyncio.Transport) -> None:
        self.channels.setdefault(channel, {})[transport] = None
        if channel in self.listening:
            transport.write(READY)
            return
        self.waiting.setdefault(channel, []).append(transport)
        if len(self.waiting[channel]) == 1:
            self.wanted.put_nowait(channel)

    def unsubscribe(self, channel: str, transport: asyncio.Transport) -> None:
        self.channels.get(channel, {}).pop(transport, None)

    def dispatch(self, channel: str, payload: str) -> None:
        frame = encode(payload)
        for transport in self.channels.get(channel, ()):
            transport.write(frame)

    async def run(self) -> None:
        """Own the LISTEN connection: LISTEN new channels, read notifications in between."""
        loop = asyncio.get_running_loop()
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name="sserelay-baseline"
        )
        pgconn = conn.pgconn
        fd = pgconn.socket

        def readable() -> None:
            pgconn.consume_input()
            while (n := pgconn.notifies()) is not None:
                self.dispatch(n.relname.decode(), n.extra.decode(errors="replace"))

        # Notifications psycopg reads while our LISTEN runs come through this handler.
        conn.add_notify_handler(lambda n: self.dispatch(n.channel, n.payload))
        try:
            while True:
                loop.add_reader(fd, readable)
                channel = await self.wanted.get()
                loop.remove_reader(fd)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.listening.add(channel)
                for transport in self.waiting.pop(channel, []):
                    if not transport.is_closing():
                        transport.write(READY)
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            await conn.close()


class Client(asyncio.Protocol):
    """One connection: a request head, then a stream until the client leaves."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.transport: Any = None
        self.head = b""
        self.channel: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.channel is not None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 8192:
                self.transport.close()
            return
        parts = self.head.split(b"\r\n", 1)[0].split()
        path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) == 3 else ""
        channel = path.removeprefix("/events").strip("/")
        if not channel or "/" in channel:
            self.transport.write(NOT_FOUND)
            self.transport.close()
            return
        self.channel = channel
        self.transport.write(HEAD)
        self.fanout.subscribe(channel, self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None:
            self.fanout.unsubscribe(self.channel, self.transport)


async def serve(host: str, port: int, dsn: str) -> None:
    loop = asyncio.get_running_loop()
    fanout = Fanout(dsn)
    listener = asyncio.create_task(fanout.run())
    server = await loop.create_server(lambda: Client(fanout), host, port, backlog=4096)
    print(f"baseline: serving on http://{host}:{port}/events/CHANNEL", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await asyncio.wait(
        [asyncio.ensure_future(stop.wait()), listener], return_when=asyncio.FIRST_COMPLETED
    )
    server.close()
    for subs in fanout.channels.values():
        for transport in subs:
            transport.abort()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal raw-asyncio SSE fan-out server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.dsn))


if __name__ == "__main__":
    main()
