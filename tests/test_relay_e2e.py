"""End to end through real sockets and a real broker: what a client of the relay sees.

Every test that takes ``bus`` runs against PostgreSQL and against Redis (see conftest):
the same behaviour on both; ``postgres_only`` tests exercise PostgreSQL's own features.

Every stream is read by the raw :class:`~sserelay.testing.SseClient`; every wait is on
a readiness signal (``: ready``, an event, a polled condition with a deadline), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from sserelay.relay import Relay
from sserelay.testing import (
    SseClient,
    SseMessage,
    raw_request,
    showing_frames,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def dsn(module_dsn: str) -> str:
    return module_dsn  # isolated: see conftest.module_dsn


@pytest.fixture
async def relay(bus: Any) -> AsyncIterator[Relay]:
    async with bus.relay(heartbeat=30.0) as relay:
        yield relay


async def stream(relay: Relay, path: str, **headers: str) -> SseClient:
    client = await SseClient.open(HOST, relay.port, path, headers)
    assert client.status == 200, (path, client.status, client.headers)
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[SseClient]]:
    """Streams opened by a test, closed after it whatever happens."""
    opened: list[SseClient] = []
    yield opened
    for client in opened:
        await client.close()


async def open_ready(relay: Relay, opened: list[SseClient], path: str, **h: str) -> SseClient:
    client = await stream(relay, path, **h)
    opened.append(client)
    with showing_frames(client):
        await client.wait_ready()
    return client


async def events_until(client: SseClient, marker: str, timeout: float = 10.0) -> list[SseMessage]:
    """The events before the one whose data is ``marker`` (which must come)."""
    got = []
    with showing_frames(client):
        while (event := await client.next_event(timeout)).data != marker:
            got.append(event)
    return got


async def get(
    relay: Relay, path: str, headers: Sequence[str] = ()
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", *headers]
    resp = await raw_request(HOST, relay.port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return resp.status, resp.headers, resp.body


# -- delivery ----------------------------------------------------------------------------


@pytest.mark.postgres_only
async def test_sql_notify_statement_reaches_stream(relay: Relay, dsn: str, clients: list) -> None:
    client = await open_ready(relay, clients, "/events/lobby")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("NOTIFY lobby, {}").format(sql.Literal("it's 5 o'clock")))
    with showing_frames(client):
        event = await client.next_event()
    assert (event.event, event.data, event.id) == ("message", "it's 5 o'clock", None)


@pytest.mark.postgres_only
async def test_notifications_arrive_in_commit_order(relay: Relay, dsn: str, clients: list) -> None:
    client = await open_ready(relay, clients, "/events/ordered")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for i in range(50):
            await conn.execute("SELECT pg_notify('ordered', %s)", (str(i),))
            if i % 10 == 9:
                await conn.commit()
        await conn.execute("SELECT pg_notify('ordered', 'rolled back')")
        await conn.rollback()
        await conn.execute("SELECT pg_notify('ordered', 'end')")
        await conn.commit()
    got = await events_until(client, "end")
    assert [e.data for e in got] == [str(i) for i in range(50)], client.seen


ENVELOPES = [
    # payload, (event, data, id, retry)
    (
        '{"event":"update","data":"x","id":"7","retry":1500}',
        ("update", "x", "7", 1500),
    ),
    (
        '{"data":{"a":1,"b":[true,null,"é"]}}',
        ("message", '{"a":1,"b":[true,null,"é"]}', None, None),
    ),
    ('{"data":42}', ("message", "42", None, None)),
    ('{"data":["a",{"b":2.5}]}', ("message", '["a",{"b":2.5}]', None, None)),
    ('{"data":"x","event_id":"e-1"}', ("message", "x", "e-1", None)),
    ('{"data":"x","id":12}', ("message", "x", "12", None)),
    ('{"event":"ping"}', ("ping", "", None, None)),
    ('{"data":"line 1\\nline 2"}', ("message", "line 1\nline 2", None, None)),
    ('{"data":"snow ☃ and 🎉"}', ("message", "snow ☃ and 🎉", None, None)),
    # Not an envelope, or an envelope that cannot go on the wire: delivered verbatim.
    ('{"data":"x","user":"bob"}', ("message", '{"data":"x","user":"bob"}', None, None)),
    ('{"data":"x","id":"a\\nb"}', ("message", '{"data":"x","id":"a\\nb"}', None, None)),
    ('{"data":"x","event":"a\\rb"}', ("message", '{"data":"x","event":"a\\rb"}', None, None)),
    ('{"data":"x","retry":"soon"}', ("message", '{"data":"x","retry":"soon"}', None, None)),
    ('{"data":"x","retry":-1}', ("message", '{"data":"x","retry":-1}', None, None)),
    ('{"data":"x","id":true}', ("message", '{"data":"x","id":true}', None, None)),
    ("{}", ("message", "{}", None, None)),
    ("[1, 2, 3]", ("message", "[1, 2, 3]", None, None)),
    ('"just a string"', ("message", '"just a string"', None, None)),
    ("{not json", ("message", "{not json", None, None)),
    ("plain text", ("message", "plain text", None, None)),
]


@pytest.mark.parametrize(("payload", "expected"), ENVELOPES, ids=[p for p, _ in ENVELOPES])
async def test_json_payload_mapping(
    relay: Relay, bus: Any, clients: list, payload: str, expected: tuple[object, ...]
) -> None:
    client = await open_ready(relay, clients, "/events/envelope")
    await bus.notify("envelope", payload)
    with showing_frames(client):
        event = await client.next_event()
    assert (event.event, event.data, event.id, event.retry) == expected, client.seen


INJECTIONS = [
    "a\nb",
    "a\r\nb",
    "a\rb",
    "\n",
    "trailing\r\n",
    "a\n\nevent: evil\ndata: injected",
    "a\r\rid: 666\r\rdata: injected",
    "a\r\n\r\nretry: 1\r\n\r\ndata: injected",
    "mixed\rline\nends\r\nhere",
]


@pytest.mark.parametrize("payload", INJECTIONS, ids=[repr(p) for p in INJECTIONS])
async def test_multiline_data_is_split_and_cannot_inject(
    relay: Relay, bus: Any, clients: list, payload: str
) -> None:
    client = await open_ready(relay, clients, "/events/lines")
    await bus.notify("lines", payload)
    # The same text as the data of an envelope must be split the same way.
    await bus.notify("lines", json.dumps({"data": payload}))
    await bus.notify("lines", "end")
    got = await events_until(client, "end")
    lines = re.split(r"\r\n|\r|\n", payload)
    assert len(got) == 2, client.seen
    for event in got:
        assert (event.event, event.id, event.retry) == ("message", None, None), client.seen
        assert event.data.split("\n") == lines, client.seen


async def test_multi_channel_stream_by_query(relay: Relay, bus: Any, clients: list) -> None:
    client = await open_ready(relay, clients, "/events?channel=red&channel=blue&channel=red")
    assert sorted(relay.hub.channels()) == ["blue", "red"]
    await bus.notify("red", "r1")
    await bus.notify("green", "not subscribed")
    await bus.notify("blue", "b1")
    await bus.notify("red", "end")
    if bus.cluster:
        # Channels on different nodes of a cluster are not ordered with each other: wait
        # for the end of each.
        await bus.notify("blue", "end")
        got = [*await events_until(client, "end"), *await events_until(client, "end")]
        assert sorted(e.data for e in got) == ["b1", "r1"], client.seen
        return
    got = await events_until(client, "end")
    # A channel asked for twice is one subscription: each event arrives once.
    assert [e.data for e in got] == ["r1", "b1"], client.seen


@pytest.mark.parametrize("path", ["/events/single", "/single", "/events?channel=single"])
async def test_single_channel_routes(relay: Relay, bus: Any, clients: list, path: str) -> None:
    client = await open_ready(relay, clients, path)
    await bus.notify("single", "hello")
    with showing_frames(client):
        assert (await client.next_event()).data == "hello"


CHANNEL_NAMES = [
    ("café ☕", "/events/" + quote("café ☕")),
    ("café ☕", "/" + quote("café ☕")),
    ("with space", "/events/with%20space"),
    ("with space", "/events?channel=with+space"),
    ("MixedCase", "/events/MixedCase"),
    ("a/b", "/events/a%2Fb"),
    ("a/b", "/a%2fb"),
    ("a/b", "/events?channel=a%2Fb"),
    ("a&b=c", "/events?channel=" + quote("a&b=c", safe="")),
    ("x" * 63, "/events/" + "x" * 63),
    ("é" * 31, "/events/" + quote("é" * 31)),  # 62 bytes
    ("événements.orders-42_x", "/events/" + quote("événements.orders-42_x")),
]


@pytest.mark.parametrize(("name", "path"), CHANNEL_NAMES, ids=[p for _, p in CHANNEL_NAMES])
async def test_channel_names_are_used_exactly(
    relay: Relay, bus: Any, clients: list, name: str, path: str
) -> None:
    client = await open_ready(relay, clients, path)
    assert relay.hub.channels() == [name]
    assert name in relay.listener._active
    if name != name.lower():
        await bus.notify(name.lower(), "other channel")  # names are case-sensitive
    await bus.notify(name, "exact")
    with showing_frames(client):
        assert (await client.next_event()).data == "exact"


@pytest.mark.postgres_only
async def test_unquoted_sql_notify_folds_case(relay: Relay, dsn: str, clients: list) -> None:
    """``NOTIFY MixedCase`` reaches ``mixedcase``; ``NOTIFY "MixedCase"`` the exact name."""
    lower = await open_ready(relay, clients, "/events/mixedcase")
    exact = await open_ready(relay, clients, "/events/MixedCase")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("NOTIFY MixedCase, 'folded'")
        await conn.execute("NOTIFY \"MixedCase\", 'quoted'")
    with showing_frames(lower, exact):
        assert (await lower.next_event()).data == "folded"
        assert (await exact.next_event()).data == "quoted"


# -- the response head ---------------------------------------------------------------------


async def test_stream_headers_and_retry_hint_first(relay: Relay, clients: list) -> None:
    client = await stream(relay, "/events/heads")
    clients.append(client)
    assert client.headers["content-type"].split(";")[0] == "text/event-stream"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    assert client.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in client.headers
    assert "access-control-allow-origin" not in client.headers  # no ALLOWED_ORIGINS set
    with showing_frames(client):
        first = await client.next_message()
        assert not first.is_event and first.retry is not None, client.seen
        # The hint is jittered (up to +50%) so that clients do not all come back at once.
        retry_ms = relay.settings.retry_ms
        assert retry_ms <= first.retry <= retry_ms * 1.5, client.seen
        await client.wait_ready()


async def test_http10_client_gets_unchunked_stream(relay: Relay, bus: Any) -> None:
    request = b"GET /events/old HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"
    client = await SseClient.open_raw(HOST, relay.port, request)
    try:
        with showing_frames(client):
            assert client.status == 200
            assert "transfer-encoding" not in client.headers
            assert client.headers["connection"].lower() == "close"
            assert not client.chunked
            await client.wait_ready()
            await bus.notify("old", "over 1.0")
            assert (await client.next_event()).data == "over 1.0"
        assert client.seen[0].retry is not None, client.seen
    finally:
        await client.close()


async def test_raw_http10_bytes_have_no_chunk_framing(relay: Relay, bus: Any) -> None:
    client = await SseClient.open_raw(HOST, relay.port, b"GET /events/bare HTTP/1.0\r\n\r\n")
    try:
        with showing_frames(client):
            await client.wait_ready()
            await bus.notify("bare", "x")
            raw = b""
            while b"data: x\n\n" not in raw:
                raw += await client.reader.read(1024)
            assert raw == b"data: x\n\n"
    finally:
        await client.close()


# -- CORS ----------------------------------------------------------------------------------

APP = "https://app.example.com"


@pytest.fixture
async def cors_relay(bus: Any) -> AsyncIterator[Relay]:
    async with bus.relay(heartbeat=30.0, allowed_origins=(APP,)) as relay:
        yield relay


async def test_cors_allowed_origin_on_stream(cors_relay: Relay, bus: Any, clients: list) -> None:
    client = await open_ready(cors_relay, clients, "/events/cors", Origin=APP)
    assert client.headers["access-control-allow-origin"] == APP
    assert "origin" in client.headers["vary"].lower()
    await bus.notify("cors", "shared")
    with showing_frames(client):
        assert (await client.next_event()).data == "shared"


async def test_cors_other_origin_gets_no_grant(cors_relay: Relay, clients: list) -> None:
    client = await open_ready(cors_relay, clients, "/events/cors", Origin="https://evil.example")
    assert "access-control-allow-origin" not in client.headers
    assert "origin" in client.headers["vary"].lower()


async def test_cors_preflight(cors_relay: Relay) -> None:
    request = (
        "OPTIONS /events/cors HTTP/1.1\r\nHost: x\r\n"
        f"Origin: {APP}\r\nAccess-Control-Request-Method: GET\r\n"
        "Access-Control-Request-Headers: last-event-id\r\n\r\n"
    )
    resp = await raw_request(HOST, cors_relay.port, request.encode())
    assert resp.status == 204, resp.raw
    assert resp.headers["access-control-allow-origin"] == APP
    assert "GET" in resp.headers["access-control-allow-methods"]
    assert "last-event-id" in resp.headers["access-control-allow-headers"].lower()
    assert resp.body == b""
    evil = request.replace(APP, "https://evil.example")
    resp = await raw_request(HOST, cors_relay.port, evil.encode())
    assert resp.status == 204, resp.raw
    assert "access-control-allow-origin" not in resp.headers


async def test_cors_error_reason_is_readable_cross_origin(cors_relay: Relay) -> None:
    status, headers, body = await get(cors_relay, "/events/%00", [f"Origin: {APP}"])
    assert status == 400
    assert headers["access-control-allow-origin"] == APP
    assert "NUL" in json.loads(body)["error"]


async def test_cors_wildcard(bus: Any, clients: list) -> None:
    async with bus.relay(heartbeat=30.0, allowed_origins=("*",)) as relay:
        client = await open_ready(relay, clients, "/events/any", Origin="https://who.ever")
        assert client.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in client.headers


# -- health and metrics --------------------------------------------------------------------


def metrics(text: str) -> dict[str, float]:
    """Every sample as ``name{label="v"}`` (or bare name) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def test_healthz(relay: Relay, clients: list) -> None:
    await open_ready(relay, clients, "/events/health")
    status, headers, body = await get(relay, "/healthz")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-cache"
    # The public answer says ok or not, and why not; never hosts, roles or counts.
    assert json.loads(body) == {"status": "ok"}
    # The operator's view (an admin token over HTTP: tests/test_health.py) has the rest.
    status, detail = relay.health(detail=True)
    assert status == 200
    assert detail["bus"]["connected"] is True
    assert detail["streams"] == 1
    assert detail["channels"] >= 1


async def test_metrics(relay: Relay, bus: Any, clients: list) -> None:
    a = await open_ready(relay, clients, "/events/m1")
    await open_ready(relay, clients, "/events?channel=m1&channel=m2")
    await bus.notify("m1", "one")
    await bus.notify("m2", "two")
    with showing_frames(a):
        assert (await a.next_event()).data == "one"
    await wait_until(lambda: relay.hub.deliveries == 3, message=lambda: str(relay.hub.deliveries))
    assert (await get(relay, "/nope/nope"))[0] == 404
    status, headers, body = await get(relay, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    m = metrics(body.decode())
    assert m["sserelay_streams_open"] == 2
    assert m["sserelay_channels"] == 2
    assert m["sserelay_streams_opened_total"] == 2
    assert m["sserelay_events_received_total"] == 2
    assert m["sserelay_deliveries_total"] == 3
    assert m["sserelay_slow_clients_dropped_total"] == 0
    assert m["sserelay_listener_connected"] == 1
    assert m["sserelay_listener_reconnects_total"] == 0
    assert m['sserelay_requests_rejected_total{status="404"}'] == 1
    assert "sserelay_notification_lag_seconds_count" in m


# -- slow clients --------------------------------------------------------------------------


async def raw_stream_socket(relay: Relay, path: str) -> socket.socket:
    """A plain socket with a small receive buffer that asked for ``path`` and saw ``: ready``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(10):
            await loop.sock_connect(sock, (HOST, relay.port))
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            seen = b""
            while b": ready\n" not in seen:
                chunk = await loop.sock_recv(sock, 4096)
                assert chunk, seen
                seen += chunk
    except BaseException:
        sock.close()
        raise
    return sock


async def test_slow_client_is_dropped_and_others_keep_every_event(bus: Any, clients: list) -> None:
    async with bus.relay(heartbeat=30.0, max_client_buffer=32 * 1024) as relay:
        fast = await open_ready(relay, clients, "/events/firehose")
        slow = await raw_stream_socket(relay, "/events/firehose")
        try:
            # From here on the slow socket is never read: its kernel buffers fill, then the
            # relay's write buffer, until it passes the bound and the relay drops it.
            filler = "x" * 7000
            sent = 0
            received: list[str] = []
            async with bus.notifier() as send:
                with showing_frames(fast):
                    while relay.hub.slow_dropped == 0:
                        assert sent < 20_000, "the slow client was never dropped"
                        for _ in range(10):
                            payload = json.dumps({"id": sent, "data": f"{sent} {filler}"})
                            await send("firehose", payload)
                            sent += 1
                        # The fast client reads everything so far before more is sent.
                        while len(received) < sent:
                            event = await fast.next_event()
                            assert event.data.startswith(f"{event.id} x"), event.data[:40]
                            received.append(event.id or "")
                        fast.seen.clear()  # keep a failure's output short
                    await send("firehose", "end")
                    while (event := await fast.next_event()).data != "end":
                        received.append(event.id or "")
            assert received == [str(i) for i in range(sent)]
            assert relay.hub.slow_dropped == 1
            assert relay.hub.stream_count == 1
            _, _, body = await get(relay, "/metrics")
            m = metrics(body.decode())
            assert m["sserelay_slow_clients_dropped_total"] == 1
            assert m["sserelay_streams_open"] == 1
            # The dropped client's connection is really gone: reading ends in EOF or a reset.
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionResetError):
                    while await loop.sock_recv(slow, 65536):
                        pass
        finally:
            slow.close()
