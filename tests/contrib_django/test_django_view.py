"""The in-process stream view under uvicorn (the chat example served by ASGI)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django_helpers import SECRET, Server, asgi_server

from sserelay import apublish
from sserelay.access.tokens import mint_token
from sserelay.testing import SseClient, showing_frames

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

HOST = "127.0.0.1"
TOKEN = mint_token(SECRET, subscribe=["view-*"], ttl=86_400)  # minted at collection


@pytest.fixture(scope="module")
def server(django_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("asgi") / "uvicorn.log"
    srv = asgi_server(
        django_dsn,
        log,
        SSERELAY_JWT_SECRET=SECRET,
        SSERELAY_HEARTBEAT="1",
        SSERELAY_RETRY_MS="300",
        SSERELAY_MAX_STREAMS_PER_CLIENT="1000",
    ).start()
    try:
        srv.wait_listening()
        yield srv
    finally:
        srv.stop()


async def open_stream(
    server: Server, path: str, *, token: str = TOKEN, **headers: str
) -> SseClient:
    sep = "&" if "?" in path else "?"
    return await SseClient.open(HOST, server.port, f"{path}{sep}token={token}", headers)


async def test_live_events_and_replay(server: Server, django_dsn: str) -> None:
    client = await open_stream(server, "/sse/events/view-live")
    with showing_frames(client):
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["x-accel-buffering"] == "no"
        await client.wait_ready()
        for text in ("one", "two"):
            await apublish(django_dsn, "view-live", {"text": text}, event="note")
        first, second = await client.next_event(), await client.next_event()
        assert (first.id, first.event, json.loads(first.data)) == ("1", "note", {"text": "one"})
        assert (second.id, json.loads(second.data)) == ("2", {"text": "two"})
        await client.close()
    await apublish(django_dsn, "view-live", "three")  # while nobody is connected
    again = await open_stream(server, "/sse/events/view-live", **{"Last-Event-ID": "1"})
    with showing_frames(again):
        ids = [(await again.next_event()).id for _ in range(2)]
        assert ids == ["2", "3"]
        await again.close()


async def test_several_channels_and_query_resume(server: Server, django_dsn: str) -> None:
    await apublish(django_dsn, "view-a", "a1")
    client = await open_stream(server, "/sse/events/?channel=view-a&channel=view-b&history=5")
    with showing_frames(client):
        await client.wait_ready()
        replayed = await client.next_event()
        assert (replayed.data, replayed.id) == ("a1", "1.0")  # a composite id: a's 1, b's 0
        await apublish(django_dsn, "view-b", "b1")
        assert (await client.next_event()).data == "b1"
        await client.close()


async def test_heartbeat(server: Server) -> None:
    client = await open_stream(server, "/sse/events/view-quiet")
    with showing_frames(client):
        await client.wait_ready()
        while "ping" not in (await client.next_message(timeout=10)).comments:
            pass
        await client.close()


async def test_tokens_are_enforced(server: Server) -> None:
    anonymous = await SseClient.open(HOST, server.port, "/sse/events/view-x")
    assert anonymous.status == 401
    assert "needs a token" in json.loads(await anonymous.body())["error"]
    await anonymous.close()
    other = mint_token(SECRET, subscribe=["elsewhere"], ttl=60)
    refused = await SseClient.open(HOST, server.port, f"/sse/events/view-x?token={other}")
    assert refused.status == 403
    await refused.close()
    bad = await SseClient.open(HOST, server.port, "/sse/events/?channel=")
    assert bad.status == 400
    await bad.close()


def listening_connections(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, state FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name LIKE 'sserelay%'"
        ).fetchall()
    return [(str(name), str(state)) for name, state in rows]


@pytest.mark.timeout(180)
async def test_300_streams_share_one_listener(server: Server, django_dsn: str) -> None:
    channels = [f"view-many-{i}" for i in range(10)]
    gate = asyncio.Semaphore(50)

    async def connect(i: int) -> SseClient:
        # 300 viewers, each with a token of their own: one subject may hold only
        # max_streams_per_subject (64) streams, and a token without one counts as its address.
        token = mint_token(SECRET, subscribe=["view-*"], subject=f"viewer-{i}", ttl=600)
        async with gate:
            path = f"/sse/events/{channels[i % 10]}"
            client = await open_stream(server, path, token=token, timeout=60)
            assert client.status == 200
            await client.wait_ready(timeout=60)
            return client

    clients = await asyncio.gather(*(connect(i) for i in range(300)))
    try:
        found = listening_connections(django_dsn)
        listeners = [row for row in found if row[0] == "sserelay-listener"]
        assert len(listeners) == 1, found
        # Besides the listener, only the replay reader's small pool (at most 4) and the
        # revocation feed's connection.
        feeds = [row for row in found if row[0] == "sserelay-revocations"]
        assert len(feeds) <= 1, found
        assert len(found) <= 6, found
        for channel in channels:
            await apublish(django_dsn, channel, f"to {channel}")
        received = await asyncio.gather(*(c.next_event(timeout=60) for c in clients))
        assert [m.data for m in received] == [f"to {channels[i % 10]}" for i in range(300)]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_graceful_shutdown(django_dsn: str, tmp_path: Path) -> None:
    srv = asgi_server(django_dsn, tmp_path / "uvicorn.log", SSERELAY_RETRY_MS="1000").start()
    try:
        await asyncio.to_thread(srv.wait_listening)
        client = await SseClient.open(HOST, srv.port, "/sse/events/view-bye")
        with showing_frames(client):
            await client.wait_ready()
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            await client.wait_closed(timeout=20)
            retries = [m.retry for m in client.seen if m.retry is not None]
            # The opening retry:, then the farewell: 1000 ms + up to 1 s of jitter.
            assert len(retries) == 2 and 1000 <= retries[1] <= 2000, client.seen
            await client.close()
        code = await asyncio.to_thread(srv.proc.wait, 20)
        # uvicorn ends as the signal would have (recent versions re-raise it) or with 0.
        assert code in (0, -signal.SIGTERM), srv.log()
        log = srv.log()
        assert "Exception in ASGI application" not in log, log
        assert "Traceback" not in log, log
    finally:
        srv.stop(signal.SIGKILL)


async def test_a_stream_whose_client_left_is_forgotten(django_dsn: str, tmp_path: Path) -> None:
    """Its place in the limits comes back (Django 4.2 needs the ASGI wrapper for this)."""
    srv = asgi_server(django_dsn, tmp_path / "uvicorn.log", SSERELAY_MAX_STREAMS_PER_CLIENT="2")
    srv.start()
    try:
        await asyncio.to_thread(srv.wait_listening)
        first = await SseClient.open(HOST, srv.port, "/sse/events/view-gone")
        second = await SseClient.open(HOST, srv.port, "/sse/events/view-gone")
        await first.wait_ready()
        await second.wait_ready()
        refused = await SseClient.open(HOST, srv.port, "/sse/events/view-gone")
        assert refused.status == 429
        await refused.close()
        await first.close()
        async with asyncio.timeout(20):
            while True:
                third = await SseClient.open(HOST, srv.port, "/sse/events/view-gone")
                await third.close()
                if third.status == 200:
                    break
                assert third.status == 429
                await asyncio.sleep(0.05)
        await second.close()
    finally:
        srv.stop()


async def test_a_response_closed_unread_gives_its_place_back(django_dsn: str) -> None:
    """Middleware failing after the view, or a client gone before the first byte: Django
    closes the response without iterating its body; the stream's lease is released."""
    from django.test import AsyncRequestFactory

    from sserelay.contrib.django.runtime import runtime
    from sserelay.contrib.django.views import stream

    request = AsyncRequestFactory().get("/sse/events/view-unread")
    response = await stream(request, channel="view-unread")
    assert response.status_code == 200
    limits = (await runtime().get()).access.limits
    assert limits.total == 1
    response.close()
    assert limits.total == 0
