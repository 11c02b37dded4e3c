"""Graceful shutdown: ``sserelay serve`` on SIGTERM (or SIGINT) tells every stream when to
come back (``retry:``), ends it properly (the last chunk), and exits 0 within seconds.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import psycopg
import pytest

from processes import relay_process
from sserelay.relay import Relay
from sserelay.testing import (
    SseClient,
    StreamClosed,
    notify,
    raw_request,
    running_relay,
    showing_frames,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
RETRY_MS = 1500


@pytest.fixture(scope="module")
def dsn(module_dsn: str) -> str:
    return module_dsn  # isolated: see conftest.module_dsn


async def ended_with_last_chunk(client: SseClient) -> None:
    """Read to the end of the stream; it must end with the last chunk, not a reset."""
    with showing_frames(client), pytest.raises(StreamClosed, match="last chunk"):
        while True:
            await client.next_message()
    # The rest of the last chunk ("0\r\n" was read), then the connection closes.
    assert await asyncio.wait_for(client.reader.read(), 10) == b"\r\n"


def farewell_retry(client: SseClient) -> int:
    """The ``retry:`` the stream got after ``: ready`` (the first one is the opening hint)."""
    ready = next(i for i, m in enumerate(client.seen) if "ready" in m.comments)
    retries = [m.retry for m in client.seen[ready + 1 :] if m.retry is not None]
    assert len(retries) == 1, client.seen
    return retries[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_ends_streams_with_retry_and_exits_0(
    dsn: str, signum: int, tmp_path: Path
) -> None:
    args = ("--dsn", dsn, "--retry", str(RETRY_MS))
    async with relay_process(*args, log=tmp_path / "relay.log") as relay:
        clients = [
            await SseClient.open(HOST, relay.port, path)
            for path in ("/events/bye", "/bye", "/events?channel=bye&channel=later")
        ]
        old = await SseClient.open_raw(HOST, relay.port, b"GET /events/bye HTTP/1.0\r\n\r\n")
        try:
            for client in [*clients, old]:
                assert client.status == 200
                with showing_frames(client):
                    await client.wait_ready()
            await notify(dsn, "bye", "last words")
            for client in [*clients, old]:
                with showing_frames(client):
                    assert (await client.next_event()).data == "last words"

            started = time.monotonic()
            relay.proc.send_signal(signum)
            for client in clients:
                await ended_with_last_chunk(client)
                # Jittered so that a restart does not bring every browser back at once.
                assert RETRY_MS <= farewell_retry(client) <= RETRY_MS + max(RETRY_MS, 1000)
            with showing_frames(old), pytest.raises(StreamClosed, match="connection closed"):
                while True:
                    await old.next_message()  # HTTP/1.0: no chunks; the close ends it
            assert farewell_retry(old) >= RETRY_MS
            assert await relay.wait(timeout=15) == 0, relay.stderr()
            assert time.monotonic() - started < 10
            assert "Traceback" not in relay.stderr(), relay.stderr()
        finally:
            for client in [*clients, old]:
                await client.close()


async def test_shutdown_does_not_wait_forever_for_a_client_that_never_reads(dsn: str) -> None:
    settings = {"heartbeat": 30.0, "shutdown_timeout": 1.0}
    async with running_relay(dsn, **settings) as relay:
        stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        honest: SseClient | None = None
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_connect(stuck, (HOST, relay.port))
            await loop.sock_sendall(stuck, b"GET /events/stuck HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(10):
                seen = b""
                while b": ready" not in seen:
                    seen += await loop.sock_recv(stuck, 4096)
            (conn,) = (c for c in relay.connections if c.channels == ("stuck",))
            # Publish until the relay holds unsent bytes for it (the kernel buffers are
            # full): its farewell cannot be flushed, yet it is not slow enough to be dropped.
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as pg:
                for _ in range(1000):
                    if conn.transport.get_write_buffer_size() > 0:
                        break
                    await pg.execute("SELECT pg_notify('stuck', %s)", ("x" * 7000,))
                    await pg.execute("SELECT 1")  # a round trip: the relay had time to write
                await wait_until(lambda: conn.transport.get_write_buffer_size() > 0)
            assert relay.hub.slow_dropped == 0
            honest = await SseClient.open(HOST, relay.port, "/events/other")
            with showing_frames(honest):
                await honest.wait_ready()
            started = time.monotonic()
            shutdown = asyncio.create_task(relay.shutdown())
            await ended_with_last_chunk(honest)
            await asyncio.wait_for(shutdown, 15)
            # shutdown_timeout (1 s) for the stuck one, then it was cut off.
            assert time.monotonic() - started < 10
            assert not relay.connections
        finally:
            stuck.close()
            if honest is not None:
                await honest.close()


async def test_in_process_shutdown(dsn: str) -> None:
    async with running_relay(dsn, heartbeat=30.0, retry_ms=RETRY_MS) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/inproc")
        with showing_frames(client):
            await client.wait_ready()
        port = relay.port
        shutdown = asyncio.create_task(relay.shutdown())
        try:
            await ended_with_last_chunk(client)
            assert farewell_retry(client) >= RETRY_MS
            await asyncio.wait_for(shutdown, 15)
        finally:
            await client.close()
        assert relay.hub.stream_count == 0
        assert relay.tasks.closing and relay.tasks.jobs == 0
        with pytest.raises(OSError):
            await raw_request(HOST, port, b"GET /healthz HTTP/1.1\r\n\r\n", timeout=5)


async def test_healthz_is_503_while_closing(relay: Relay) -> None:
    relay.hub.closing = True  # what shutdown sets first: load balancers stop sending clients
    try:
        resp = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert resp.status == 503, resp.raw
        resp = await raw_request(HOST, relay.port, b"GET /events/late HTTP/1.1\r\n\r\n")
        assert resp.status == 503, resp.raw
        assert resp.headers["retry-after"] == "1"
    finally:
        relay.hub.closing = False
