"""The ASGI app, served by a real uvicorn on real sockets against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fronts import Served, uvicorn_serving
from sserelay import asgi
from sserelay.asgi import RelayApp, create_app
from sserelay.bus.postgres.listener import APPLICATION_NAME
from sserelay.config import Settings
from sserelay.errors import ConfigError
from sserelay.http.asgi import route_path
from sserelay.http.buffered import BufferedStream as AsgiStream
from sserelay.testing import (
    RawResponse,
    SseClient,
    notify,
    raw_request,
    running_relay,
    wait_until,
)
from sserelay.wire.envelope import Event

# -- helpers -----------------------------------------------------------------------------


def unique(prefix: str = "asgi") -> str:
    """A channel name no other test (or concurrent test run on this server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def relay_app(dsn: str) -> AsyncIterator[RelayApp]:
    app = create_app(Settings(heartbeat=30.0), dsn=dsn)
    yield app
    await app.shutdown()  # for tests that serve it without a lifespan


@pytest.fixture
async def served(relay_app: RelayApp) -> AsyncIterator[Served]:
    async with uvicorn_serving(relay_app, relay_app) as served:
        yield served


async def get(
    port: int, target: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> RawResponse:
    """One request on a connection of its own (``Connection: close``), read to the end."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return await raw_request("127.0.0.1", port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def farewell_retry(client: SseClient) -> int:
    """The ``retry:`` a stream got after its ``: ready`` (its shutdown farewell)."""
    retries = [m.retry for m in client.seen if m.retry is not None and not m.is_event]
    assert len(retries) == 2, f"expected the first retry: and a farewell; saw {client.seen}"
    return retries[-1]


class Lifespan:
    """Drive an app's ASGI lifespan as a server would."""

    def __init__(self, app: RelayApp) -> None:
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(app(scope, self._to_app.get, self._from_app.put))

    async def step(self, kind: str) -> dict[str, Any]:
        await self._to_app.put({"type": f"lifespan.{kind}"})
        async with asyncio.timeout(30):
            return await self._from_app.get()


def own_tcp_ports() -> set[int] | None:
    """Local ports of this process's TCP sockets (Linux), or None if unknown."""
    if not Path("/proc/self/fd").is_dir():
        return None
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def listener_backends(dsn: str) -> list[tuple[int, str]]:
    """(pid, application_name) of every backend this process holds, but the asking one.

    Filtering by this process's ports keeps the count exact while other relays (other
    test runs) use the same server. Over a Unix socket, every listener counts.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        row = await cur.fetchone()
        ports = own_tcp_ports() if row and row[0] and row[0] > 0 else None
        if ports is None:
            cur = await conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE application_name = %s",
                (APPLICATION_NAME,),
            )
        else:
            cur = await conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND client_port = ANY(%s)",
                (sorted(ports),),
            )
        return [(int(pid), str(name)) for pid, name in await cur.fetchall()]


# -- the module-level app and the factory --------------------------------------------


def test_importing_the_module_reads_and_connects_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SSERELAY_DATA_DIR"] = str(tmp_path / "pgdata")
    env["SSERELAY_PORT"] = "not-a-port"  # reading the environment now would raise
    code = (
        "import sys, sserelay.asgi as m\n"
        "assert not m.app.started\n"
        "assert 'pgserver' not in sys.modules\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
    assert not (tmp_path / "pgdata").exists()


def test_create_app_reads_the_environment_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSERELAY_RETRY_MS", "soon")
    with pytest.raises(ConfigError, match="SSERELAY_RETRY_MS"):
        create_app()


@pytest.mark.integration
async def test_lifespan_startup_fails_with_a_one_line_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSERELAY_MAX_CLIENT_BUFFER", "lots")
    app = RelayApp()  # like the module-level app: configured when it starts
    lifespan = Lifespan(app)
    reply = await lifespan.step("startup")
    assert reply["type"] == "lifespan.startup.failed"
    assert "SSERELAY_MAX_CLIENT_BUFFER" in reply["message"]
    assert "\n" not in reply["message"]
    await asyncio.wait_for(lifespan.task, 5)
    assert not app.started


def test_public_names() -> None:
    assert set(asgi.__all__) == {"RelayApp", "StopSignals", "app", "create_app"}
    assert isinstance(asgi.app, RelayApp)


# -- route_path: pure logic ----------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"path": "/events/a/b", "raw_path": b"/events/a%2Fb"}, "/events/a%2Fb"),
        ({"path": "/x", "raw_path": b"/x?channel=a"}, "/x"),
        # uvicorn --root-path, Starlette >= 0.33 Mount: root in path and raw_path
        (
            {"path": "/live/events/a", "raw_path": b"/live/events/a", "root_path": "/live"},
            "/events/a",
        ),
        # the prefix percent-encoded by the client
        ({"path": "/live/x", "raw_path": b"/l%69ve/x", "root_path": "/live"}, "/x"),
        # older Starlette: root removed from path, still in raw_path
        (
            {"path": "/events/%41", "raw_path": b"/live/events/%2541", "root_path": "/live"},
            "/events/%2541",
        ),
        # a server that leaves the root out of raw_path
        (
            {"path": "/events/a b", "raw_path": b"/events/a%20b", "root_path": "/live"},
            "/events/a%20b",
        ),
        ({"path": "/live", "raw_path": b"/live", "root_path": "/live"}, "/"),
        # no raw_path: the decoded path, encoded again so route() decodes it once
        ({"path": "/live/events/100%", "root_path": "/live"}, "/events/100%25"),
        ({"path": "/caf\u00e9"}, "/caf%C3%A9"),
    ],
)
def test_route_path(scope: dict[str, Any], expected: str) -> None:
    assert route_path(scope) == expected


# -- AsgiStream: the buffer between the hub and send() (pure logic) -------------------


class BlockingSend:
    """An ASGI ``send`` that records messages and can be held, like a client not reading."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.released = asyncio.Event()
        self.released.set()
        self.entered = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.entered.set()
        await self.released.wait()
        self.messages.append(message)


async def test_a_burst_does_not_drop_a_stream_that_is_not_blocked() -> None:
    stream = AsgiStream(("c",), limit=4096)
    send = BlockingSend()
    pump = asyncio.create_task(stream.pump(send))
    # 100 kB handed over in one loop iteration: waiting for the pump is not slowness.
    assert all(stream.deliver(Event("c", "x" * 1000)) for _ in range(100))
    await wait_until(lambda: len(send.messages) == 1)
    assert send.messages[0]["body"].count(b"data: ") == 100
    assert send.messages[0]["more_body"] is True
    stream.close(b"retry: 5\n\n")
    await asyncio.wait_for(pump, 5)
    last = send.messages[-1]
    assert (last["body"], last["more_body"]) == (b"retry: 5\n\n", False)
    assert stream.finished


async def test_a_stream_blocked_in_send_is_slow_past_its_limit() -> None:
    stream = AsgiStream(("c",), limit=4096)
    send = BlockingSend()
    send.released.clear()
    pump = asyncio.create_task(stream.pump(send))
    stream.write(b": hello\n\n")
    await asyncio.wait_for(send.entered.wait(), 5)  # the server applies backpressure
    assert stream.deliver(Event("c", "x" * 5000))  # one event over the bound: caught up
    assert not stream.deliver(Event("c", "y"))  # more behind it: slow
    stream.abort()  # the hub drops it: what is unsent is discarded
    send.released.set()
    await asyncio.wait_for(pump, 5)
    assert [m["body"] for m in send.messages] == [b": hello\n\n", b""]
    assert send.messages[-1]["more_body"] is False


async def test_a_disconnected_stream_sends_nothing_more() -> None:
    stream = AsgiStream(("c",), limit=4096)
    send = BlockingSend()
    pump = asyncio.create_task(stream.pump(send))
    stream.disconnected()
    stream.write(b": late\n\n")
    await asyncio.wait_for(pump, 5)
    assert send.messages == [] and stream.finished


# -- streams ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_raw_notify_reaches_stream(served: Served, dsn: str) -> None:
    channel = unique()
    client = await served.open(f"/events/{channel}")
    try:
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert client.headers["cache-control"] == "no-cache"
        assert client.headers["x-accel-buffering"] == "no"
        assert client.chunked
        first = await client.next_message()
        assert 2000 <= (first.retry or 0) <= 3000, client.seen  # retry_ms + up to 50% jitter
        await client.wait_ready()
        await notify(dsn, channel, "Hello, world!")
        event = await client.next_event()
        assert event.data == "Hello, world!", client.seen
        envelope = {"event": "chat", "id": "7", "data": {"text": "line 1\nline 2"}}
        await notify(dsn, channel, json.dumps(envelope))
        event = await client.next_event()
        assert (event.event, event.id) == ("chat", "7"), client.seen
        assert json.loads(event.data) == {"text": "line 1\nline 2"}
    finally:
        await client.close()


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_one_stream_many_channels(served: Served, dsn: str) -> None:
    a, b = unique(), unique()
    client = await served.open(f"/events?channel={a}&channel={b}")
    single = await served.open(f"/{a}")  # sse-relay-server's path form
    slashed = await served.open("/events/" + f"{b}/x".replace("/", "%2F"))
    try:
        for c in (client, single, slashed):
            assert c.status == 200
            await c.wait_ready()
        await notify(dsn, a, "to a")
        await notify(dsn, b, "to b")
        await notify(dsn, f"{b}/x", "to b/x")
        got = [(await client.next_event()).data, (await client.next_event()).data]
        assert got == ["to a", "to b"], client.seen
        assert (await single.next_event()).data == "to a", single.seen
        assert (await slashed.next_event()).data == "to b/x", slashed.seen
        assert served.app.hub.stream_count == 3
    finally:
        for c in (client, single, slashed):
            await c.close()


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_client_disconnect_unsubscribes(served: Served) -> None:
    hub = served.app.hub
    listener = served.app.relay.listener
    client = await served.open(f"/events/{unique()}")
    try:
        await client.wait_ready()
        assert hub.stream_count == 1
        assert listener.status()["channels"] == 1
    finally:
        await client.close()
    await wait_until(lambda: hub.stream_count == 0, message="the hub to forget the stream")
    await wait_until(lambda: listener.status()["channels"] == 0, message="UNLISTEN")
    assert hub.channel_count == 0


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_idle_streams_get_heartbeats(dsn: str) -> None:
    app = create_app(Settings(heartbeat=0.2), dsn=dsn)
    async with uvicorn_serving(app, app) as served:
        client = await served.open(f"/events/{unique()}")
        try:
            await client.wait_ready()
            message = await client.next_message(5)
            assert message.comments == ["ping"], client.seen
        finally:
            await client.close()


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_slow_client_is_dropped_and_its_response_ended(dsn: str) -> None:
    app = create_app(Settings(heartbeat=30.0, max_client_buffer=32 * 1024), dsn=dsn)
    channel = unique()
    async with uvicorn_serving(app, app) as served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window, so the server's buffers fill after little data.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        client = SseClient(reader, writer)
        try:
            async with asyncio.timeout(10):
                await client._read_head()
            await client.wait_ready()
            hub = app.hub
            payload = "x" * 7000
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                for batch in range(200):  # at most ~140 MB; a few MB fill the buffers
                    async with conn.transaction():
                        for i in range(100):
                            await conn.execute(
                                "SELECT pg_notify(%s, %s)", (channel, f"{batch}.{i} {payload}")
                            )
                    if hub.slow_dropped:
                        break
            await wait_until(
                lambda: hub.slow_dropped == 1, timeout=30, message="slow client dropped"
            )
            assert hub.stream_count == 0
            # Reading again, the client gets what the server had buffered, then the end.
            await client.wait_closed(60)
            assert client.seen[-1].is_event, client.seen[-1]  # no farewell: it was dropped
        finally:
            await client.close()


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_300_streams_share_one_listener_connection(served: Served, dsn: str) -> None:
    channel = unique()
    clients: list[SseClient] = []

    async def open_ready() -> None:
        client = await served.open(f"/events/{channel}")
        clients.append(client)
        await client.wait_ready(30)

    try:
        for _ in range(6):
            await asyncio.gather(*(open_ready() for _ in range(50)))
        assert served.app.hub.stream_count == 300
        backends = await listener_backends(dsn)
        # One LISTEN connection whatever the streams; besides it, at most the small pool
        # that reads the durable log (it asks once whether the schema is installed).
        names = [name for _, name in backends]
        assert names.count(APPLICATION_NAME) == 1, backends
        assert set(names) <= {APPLICATION_NAME, "sserelay-reader"}, backends
        await notify(dsn, channel, "to everyone")
        events = await asyncio.gather(*(c.next_event(30) for c in clients))
        assert {e.data for e in events} == {"to everyone"}
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    hub = served.app.hub
    await wait_until(lambda: hub.stream_count == 0, timeout=30, message="streams forgotten")


# -- plain endpoints and errors ------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_healthz_and_metrics(served: Served) -> None:
    await served.app.relay.listener.connected_event.wait()
    response = await get(served.port, "/healthz")
    assert response.status == 200, response.raw
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-cache"
    assert response.json() == {"status": "ok"}
    assert served.app.hub.stream_count == 0
    assert response.body.count(b"\n") == 1

    client = await served.open(f"/events/{unique()}")
    try:
        await client.wait_ready()
        assert (await get(served.port, "/nope/nope")).status == 404
        response = await get(served.port, "/metrics")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.body.decode()
        assert "sserelay_streams_open 1.0" in text
        assert "sserelay_listener_connected 1.0" in text
        assert 'sserelay_requests_rejected_total{status="404"} 1.0' in text
        assert served.app.hub.stream_count == 1
    finally:
        await client.close()


BAD_REQUESTS = [
    ("GET", "/events/" + "x" * 64),
    ("GET", "/events/sserelay.probe"),
    ("GET", "/events/%FF"),
    ("GET", "/events/a%00b"),
    ("GET", "/events"),
    ("GET", "/events?channel="),
    ("GET", "/events?" + "&".join(f"channel=c{i}" for i in range(33))),
    ("GET", "/a/b"),
    ("GET", "/"),
    ("GET", "/healthz/"),
    ("GET", "/publish"),
    ("POST", "/events/x"),
    ("DELETE", "/healthz"),
    ("PUT", "/nope"),
]


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_errors_and_cors_match_the_native_server(dsn: str) -> None:
    origins = ("https://app.example",)
    app = create_app(Settings(heartbeat=30.0, allowed_origins=origins), dsn=dsn)
    async with (
        running_relay(dsn, heartbeat=30.0, allowed_origins=origins) as native,
        uvicorn_serving(app, app) as served,
    ):
        for origin in (None, "https://app.example", "https://evil.example"):
            headers = {"Origin": origin} if origin else {}
            for method, target in BAD_REQUESTS:
                want = await get(native.port, target, headers, method=method)
                got = await get(served.port, target, headers, method=method)
                assert got.status == want.status, (method, target, got.raw, want.raw)
                assert 400 <= got.status < 500
                assert got.body == want.body, (method, target)
                assert got.body.count(b"\n") == 1 and "error" in got.json()
                for name in ("content-type", "allow", "access-control-allow-origin", "vary"):
                    assert got.headers.get(name) == want.headers.get(name), (target, name)
            preflight = {**headers, "Access-Control-Request-Method": "GET"}
            want = await get(native.port, "/events/x", preflight, method="OPTIONS")
            got = await get(served.port, "/events/x", preflight, method="OPTIONS")
            assert got.status == want.status == 204
            cors = {k: v for k, v in want.headers.items() if k.startswith("access-control-")}
            assert {k: v for k, v in got.headers.items() if k.startswith("access-control-")} == cors
            if origin == "https://app.example":
                assert cors["access-control-allow-origin"] == origin
        client = await served.open("/events/x", {"Origin": "https://app.example"})
        try:
            assert client.headers["access-control-allow-origin"] == "https://app.example"
        finally:
            await client.close()


# -- lifecycle -------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_lifespan_shutdown_ends_streams_with_a_jittered_retry(dsn: str) -> None:
    retry_ms = 1500
    app = create_app(Settings(heartbeat=30.0, retry_ms=retry_ms), dsn=dsn)
    lifespan = Lifespan(app)
    assert (await lifespan.step("startup"))["type"] == "lifespan.startup.complete"
    relay = app.relay
    # lifespan="off": uvicorn itself would only send lifespan.shutdown after every
    # response ended; this test plays a server (or a parent app) that sends it now.
    async with uvicorn_serving(app, app, lifespan="off") as served:
        clients = [await served.open(f"/events/{unique()}") for _ in range(5)]
        try:
            for client in clients:
                await client.wait_ready()
            reply = await lifespan.step("shutdown")
            assert reply["type"] == "lifespan.shutdown.complete", reply
            retries = []
            for client in clients:
                await client.wait_closed()
                retries.append(farewell_retry(client))
            assert all(retry_ms <= r <= 2 * retry_ms for r in retries), retries
            assert len(set(retries)) > 1, f"not jittered: {retries}"
            late = await get(served.port, "/events/late")
            assert (late.status, late.headers.get("retry-after")) == (503, "1"), late.raw
            assert late.json() == {"error": "relay is shutting down"}
            script = await get(served.port, "/sserelay.js")  # static: served while closing
            assert script.status == 200, script.raw[:300]
        finally:
            for client in clients:
                await client.close()
    await asyncio.wait_for(lifespan.task, 5)
    assert not app.started
    assert relay.hub.stream_count == 0
    assert not relay.listener.connected
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("sserelay-")]
    assert not leftover


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_uvicorn_exit_ends_streams_then_stops_the_listener(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(heartbeat=30.0, retry_ms=1000), dsn=dsn)
    async with uvicorn_serving(app, app, timeout_graceful_shutdown=1) as served:
        clients = [await served.open(f"/events/{unique()}") for _ in range(3)]
        try:
            for client in clients:
                await client.wait_ready()
            relay = app.relay
            served.server.should_exit = True
            for client in clients:
                await client.wait_closed()
                assert 1000 <= farewell_retry(client) <= 2000
        finally:
            for client in clients:
                await client.close()
    # uvicorn ran lifespan shutdown after cancelling the streams.
    assert not app.started
    assert not relay.listener.connected
    assert "Exception in ASGI application" not in caplog.text


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_without_lifespan_the_first_requests_start_one_relay(
    relay_app: RelayApp, dsn: str
) -> None:
    assert not relay_app.started
    channel = unique()
    async with uvicorn_serving(relay_app, relay_app, lifespan="off") as served:
        clients = await asyncio.gather(*(served.open(f"/events/{channel}") for _ in range(10)))
        try:
            await asyncio.gather(*(c.wait_ready() for c in clients))
            assert relay_app.started
            assert relay_app.hub.stream_count == 10  # all on one hub
            await notify(dsn, channel, "lazy")
            for client in clients:
                assert (await client.next_event()).data == "lazy", client.seen
        finally:
            for client in clients:
                await client.close()
    relay = relay_app.relay
    await relay_app.shutdown()
    assert not relay.listener.connected


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_the_documented_uvicorn_command(dsn: str) -> None:
    uvicorn_bin = Path(sys.executable).parent / "uvicorn"
    env = {**os.environ, "DATABASE_URL": dsn, "SSERELAY_RETRY_MS": "1000"}
    proc = await asyncio.create_subprocess_exec(
        str(uvicorn_bin),
        "sserelay.asgi:app",
        "--host", "127.0.0.1", "--port", "0", "--timeout-graceful-shutdown", "3",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not (m := re.search(r"running on http://127.0.0.1:(\d+)", "".join(log))):
                line = await proc.stderr.readline()
                assert line, f"uvicorn exited: {''.join(log)}"
                log.append(line.decode())
        port = int(m.group(1))
        channel = unique()
        client = await SseClient.open("127.0.0.1", port, f"/events/{channel}")
        try:
            await client.wait_ready()
            await notify(dsn, channel, "from the command line")
            assert (await client.next_event()).data == "from the command line"
            proc.send_signal(signal.SIGTERM)
            await client.wait_closed()
            assert 1000 <= farewell_retry(client) <= 2000
        finally:
            await client.close()
        async with asyncio.timeout(30):
            rest = await proc.stderr.read()
            returncode = await proc.wait()
        output = "".join(log) + rest.decode()
        # uvicorn re-raises the signal it caught once it has shut down.
        assert returncode in (0, -signal.SIGTERM), output
        assert "Application shutdown complete" in output, output
        assert "Exception in ASGI application" not in output, output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- mounted in Starlette ----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_mounted_in_starlette_under_a_prefix(dsn: str) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    relay_app = create_app(Settings(heartbeat=30.0), dsn=dsn)
    web = Starlette(
        routes=[Route("/", home), Mount("/live", app=relay_app)],
        lifespan=relay_app.lifespan,
    )
    channel = unique()
    async with uvicorn_serving(web, relay_app) as served:
        assert relay_app.started
        client = await served.open(f"/live/events/{channel}")
        slashed = await served.open("/live/events/" + f"{channel}/x".replace("/", "%2F"))
        try:
            for c in (client, slashed):
                assert c.status == 200
                await c.wait_ready()
            await notify(dsn, channel, "mounted")
            await notify(dsn, f"{channel}/x", "slashed")
            assert (await client.next_event()).data == "mounted", client.seen
            assert (await slashed.next_event()).data == "slashed", slashed.seen
            health = await get(served.port, "/live/healthz")
            assert health.status == 200 and health.json() == {"status": "ok"}
            assert relay_app.hub.stream_count == 2
            missing = await get(served.port, "/live/a/b")
            assert missing.status == 404 and "/a/b" in missing.json()["error"]
            assert (await get(served.port, "/")).body == b"home"
        finally:
            await client.close()
            await slashed.close()
    assert not relay_app.started  # the parent's lifespan shut it down
