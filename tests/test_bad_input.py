"""Bad requests, through real sockets: each gets a clear 4xx with a one-line JSON reason
(never a 500, never a hang), and one honest stream, open for the whole module, keeps
receiving every event in between.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from sserelay.relay import Relay
from sserelay.testing import (
    RawResponse,
    SseClient,
    notify,
    raw_request,
    running_relay,
    showing_frames,
    wait_until,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(60),
    pytest.mark.asyncio(loop_scope="module"),
]

HOST = "127.0.0.1"
MAX_CHANNELS = 4
MAX_HEAD = 8192


@pytest.fixture(scope="module")
def dsn(module_dsn: str) -> str:
    return module_dsn  # isolated: see conftest.module_dsn


@dataclass
class Honest:
    """A well-behaved stream that must see every event, in order, whatever others send."""

    relay: Relay
    client: SseClient
    dsn: str
    sent: int = 0

    async def check(self) -> None:
        self.sent += 1
        await notify(self.dsn, "honest", str(self.sent))
        with showing_frames(self.client):
            event = await self.client.next_event()
        assert event.data == str(self.sent), self.client.seen
        self.client.seen.clear()  # failure output shows only what came since the last check


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def honest(dsn: str) -> AsyncIterator[Honest]:
    settings = {"header_timeout": 0.5, "max_channels_per_stream": MAX_CHANNELS}
    async with running_relay(dsn, heartbeat=30.0, **settings) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/honest")
        try:
            with showing_frames(client):
                await client.wait_ready()
            yield Honest(relay, client, dsn)
        finally:
            await client.close()


def request(target: str, method: str = "GET", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: relay.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_clear_error(resp: RawResponse, status: int, reason: str) -> None:
    assert resp.status == status, resp.raw[:300]
    assert resp.headers["content-type"] == "application/json", resp.raw[:300]
    assert resp.headers["connection"] == "close"
    assert int(resp.headers["content-length"]) == len(resp.body), resp.raw[:300]
    assert resp.body.endswith(b"\n") and resp.body.count(b"\n") == 1, resp.body
    error = json.loads(resp.body)["error"]
    assert isinstance(error, str) and error, resp.body
    assert reason.lower() in error.lower(), error


BAD_REQUESTS = [
    # id, request, status, words of the reason
    ("empty channel in query", request("/events?channel="), 400, "empty"),
    ("empty channel in path", request("/events/"), 400, "no channel"),
    ("root path", request("/"), 404, "no channel"),
    ("64-byte channel", request("/events/" + "a" * 64), 400, "64 bytes"),
    ("64-byte unicode channel", request("/events/" + "%C3%A9" * 32), 400, "64 bytes"),
    ("64-byte channel in query", request("/events?channel=" + "a" * 64), 400, "64 bytes"),
    ("NUL", request("/events/a%00b"), 400, "NUL"),
    ("NUL in query", request("/events?channel=a%00"), 400, "NUL"),
    ("control char", request("/events/a%01b"), 400, "control"),
    ("CRLF", request("/events/a%0D%0ASet-Cookie:%20x"), 400, "control"),
    ("DEL", request("/a%7F"), 400, "control"),
    ("invalid utf-8", request("/events/%FF"), 400, "UTF-8"),
    ("invalid utf-8 sequence", request("/events/%C3%28"), 400, "UTF-8"),
    ("truncated utf-8", request("/%E2%82"), 400, "UTF-8"),
    ("invalid utf-8 in query", request("/events?channel=%C3%28"), 400, "UTF-8"),
    ("lone surrogate", request("/events/%ED%A0%80"), 400, "UTF-8"),
    ("reserved prefix", request("/events/sserelay.probe.1"), 400, "reserved"),
    ("reserved prefix at root", request("/sserelay.x"), 400, "reserved"),
    ("unknown route", request("/a/b"), 404, "no such endpoint"),
    ("GET on the publish endpoint", request("/publish"), 405, "use POST"),
    ("events without channel", request("/events"), 400, "no channel"),
    ("events with other params", request("/events?chanel=typo"), 400, "no channel"),
    (
        "too many channels",
        request("/events?" + "&".join(f"channel=c{i}" for i in range(MAX_CHANNELS + 1))),
        400,
        f"at most {MAX_CHANNELS}",
    ),
    ("too many query fields", request("/events?" + "&x" * 300), 400, "fields"),
    ("asterisk target", request("*"), 400, "absolute path"),
    ("bad history", request("/events/h?history=lots"), 400, "history"),
    ("POST", request("/events/x", "POST", "Content-Length: 5") + b"hello", 405, "POST"),
    ("PUT", request("/events/x", "PUT", "Content-Length: 0"), 405, "PUT"),
    ("DELETE", request("/events/x", "DELETE"), 405, "DELETE"),
    ("PATCH healthz", request("/healthz", "PATCH"), 405, "PATCH"),
    ("garbage", b"\x00\x01\x02 hello there\r\n\r\n", 400, "malformed"),
    ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)), 400, ""),
    ("HTTP/0.9", b"GET /events/x\r\n\r\n", 400, "not supported"),
    ("HTTP/2.0 as text", b"GET /events/x HTTP/2.0\r\n\r\n", 400, "not supported"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, ""),
    ("bad version", b"GET /events/x HTTP/x.y\r\n\r\n", 400, "malformed"),
    ("raw utf-8 target", "GET /events/café HTTP/1.1\r\n\r\n".encode(), 400, "malformed"),
    ("space in target", b"GET /events/a b HTTP/1.1\r\n\r\n", 400, "malformed"),
    ("header without colon", request("/events/x", "GET", "Oops"), 400, "malformed"),
    (
        "oversized headers",
        request("/events/x", "GET", "X-Big: " + "a" * 20_000),
        431,
        f"over {MAX_HEAD}",
    ),
    (
        "many headers",
        request("/events/x", "GET", *(f"X-H{i}: {'v' * 60}" for i in range(200))),
        431,
        f"over {MAX_HEAD}",
    ),
    ("over-long request line", request("/events/" + "a" * 20_000), 431, f"over {MAX_HEAD}"),
    ("over-long query", request("/events?channel=a&pad=" + "b" * 9_000), 431, f"over {MAX_HEAD}"),
]


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_request_gets_clear_4xx(
    honest: Honest, raw: bytes, status: int, reason: str
) -> None:
    rejected = honest.relay.rejected[status]
    resp = await raw_request(HOST, honest.relay.port, raw)
    assert_clear_error(resp, status, reason)
    if status == 405:
        allowed = "POST, OPTIONS" if b" /publish " in raw else "GET, OPTIONS"
        assert resp.headers["allow"] == allowed
    assert honest.relay.rejected[status] == rejected + 1
    assert honest.relay.hub.stream_count == 1  # the bad request subscribed nothing
    await honest.check()


async def test_head_gets_405_without_a_body(honest: Honest) -> None:
    resp = await raw_request(HOST, honest.relay.port, request("/events/x", "HEAD"))
    assert resp.status == 405, resp.raw
    assert resp.headers["allow"] == "GET, OPTIONS"
    assert resp.body == b"", resp.raw  # a response to HEAD has no content
    await honest.check()


async def test_oversized_head_in_many_writes(honest: Honest) -> None:
    head = request("/events/x", "GET", "X-Big: " + "a" * 9_000)
    # Stop sending once past the bound, so the relay has read everything when it closes.
    parts = [head[i : i + 1000] for i in range(0, MAX_HEAD + 1, 1000)]  # 9000 bytes: no end
    resp = await raw_request(HOST, honest.relay.port, parts)
    assert_clear_error(resp, 431, f"over {MAX_HEAD}")
    await honest.check()


@pytest.mark.parametrize(
    "partial",
    [b"", b"GET /events/slowloris HTTP/1.1\r\n", b"GET /events/slowloris HTTP/1.1\r\nHost: x"],
    ids=["nothing", "request line only", "unfinished header"],
)
async def test_unfinished_head_times_out_with_408(honest: Honest, partial: bytes) -> None:
    resp = await raw_request(HOST, honest.relay.port, partial, timeout=30)
    assert_clear_error(resp, 408, "not received within 0.5s")
    await honest.check()


async def test_unknown_last_event_id_is_not_an_error(honest: Honest) -> None:
    """EventSource gives up for good on a non-200: a bad Last-Event-ID must not cause one."""
    for value in ("garbage", "-1", "1.2.3.4.5", "9" * 40):
        client = await SseClient.open(
            HOST, honest.relay.port, "/events/h", {"Last-Event-ID": value}
        )
        try:
            assert client.status == 200, value
            with showing_frames(client):
                await client.wait_ready()
        finally:
            await client.close()
    await honest.check()


# -- odd but valid: these must work ---------------------------------------------------------


async def test_request_split_byte_by_byte(honest: Honest, dsn: str) -> None:
    # A relay of its own with the default header timeout: one byte per loop turn is slow.
    async with running_relay(dsn, heartbeat=30.0) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        client = SseClient(reader, writer)
        try:
            await wait_until(lambda: len(relay.connections) == 1)
            (conn,) = relay.connections
            data = request("/events/dribble", "GET", "Accept: text/event-stream")
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                # The relay has parsed this byte alone before the next is sent.
                await wait_until(lambda: conn.received == i + 1, interval=0.001)  # noqa: B023
            await asyncio.wait_for(client._read_head(), 10)
            assert client.status == 200
            with showing_frames(client):
                await client.wait_ready()
                await notify(dsn, "dribble", "drop by drop")
                assert (await client.next_event()).data == "drop by drop"
        finally:
            await client.close()
    await honest.check()


PIPELINED = [
    b"\x00\x01 junk \xff\r\n\r\n",
    b"GARBAGE GARBAGE GARBAGE\r\n\r\n",
    request("/healthz"),
    request("/events/other"),
    request("/events/x", "POST", "Content-Length: 3") + b"abc",
    b"HTTP/1.1 200 OK\r\n\r\ndata: forged\n\n",
]


@pytest.mark.parametrize("junk", PIPELINED, ids=[repr(j[:20]) for j in PIPELINED])
async def test_pipelined_junk_after_a_stream_request_is_ignored(
    honest: Honest, dsn: str, junk: bytes
) -> None:
    relay = honest.relay
    client = await SseClient.open_raw(HOST, relay.port, request("/events/piped") + junk)
    try:
        assert client.status == 200
        with showing_frames(client):
            await client.wait_ready()
            client.writer.write(junk)  # and more later, in a write of its own
            await client.writer.drain()
            await notify(dsn, "piped", "still streaming")
            event = await client.next_event()
            assert event.data == "still streaming", client.seen
        assert relay.hub.channels().count("other") == 0
    finally:
        await client.close()
    await honest.check()


async def test_upgrade_request_is_answered_as_plain_http(honest: Honest, dsn: str) -> None:
    raw = request("/events/upgraded", "GET", "Connection: Upgrade", "Upgrade: websocket")
    client = await SseClient.open_raw(HOST, honest.relay.port, raw)
    try:
        assert client.status == 200
        with showing_frames(client):
            await client.wait_ready()
            await notify(dsn, "upgraded", "plain sse")
            assert (await client.next_event()).data == "plain sse"
    finally:
        await client.close()
    await honest.check()


async def test_absolute_form_target(honest: Honest, dsn: str) -> None:
    raw = request("http://relay.test/events/absolute")
    client = await SseClient.open_raw(HOST, honest.relay.port, raw)
    try:
        assert client.status == 200
        with showing_frames(client):
            await client.wait_ready()
    finally:
        await client.close()
    await honest.check()


async def test_no_500_was_ever_sent(honest: Honest) -> None:
    """Runs last in this module: every rejection above was a 4xx."""
    rejected = honest.relay.rejected
    assert rejected, "the bad requests above were not counted"
    assert all(400 <= status < 500 for status in rejected), rejected
    await honest.check()
