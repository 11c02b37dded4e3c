"""The one LISTEN connection, end to end: it follows subscribers, is shared by every
stream, and survives losing PostgreSQL without closing the streams.

``pg_listening_channels()`` only shows the calling session's channels, so what the
relay LISTENs on is checked through its own state and, better, through what
PostgreSQL still delivers to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from proxy import Proxy
from sserelay.bus.postgres.listener import APPLICATION_NAME
from sserelay.config import Settings
from sserelay.relay import Relay
from sserelay.testing import (
    SseClient,
    notify,
    raw_request,
    running_relay,
    showing_frames,
    wait_until,
)
from streams import FakeStream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
FAST_RECONNECT = {"reconnect_min": 0.05, "reconnect_max": 0.5}


@pytest.fixture(scope="module")
def dsn(module_dsn: str) -> str:
    return module_dsn  # isolated: see conftest.module_dsn


async def open_ready(relay: Relay, path: str) -> SseClient:
    client = await SseClient.open(HOST, relay.port, path)
    assert client.status == 200, client.headers
    with showing_frames(client):
        await client.wait_ready()
    return client


async def healthz(relay: Relay) -> tuple[int, dict[str, Any]]:
    resp = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return resp.status, resp.json()


# -- LISTEN / UNLISTEN follow the subscribers ---------------------------------------------


async def test_listen_and_unlisten_follow_subscribers(relay: Relay, dsn: str) -> None:
    listener, hub = relay.listener, relay.hub
    marker = await open_ready(relay, "/events/marker")
    a = await open_ready(relay, "/events/follow")
    b = await open_ready(relay, "/events?channel=follow&channel=other")
    try:
        assert {"marker", "follow", "other"} <= listener._active
        # Why the relay's own state is what we check: LISTENs are private to a session.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT pg_listening_channels()")
            assert await cur.fetchall() == []
        await b.close()
        # "other" lost its only subscriber; "follow" still has one.
        await wait_until(
            lambda: "other" not in listener._active, message=lambda: str(listener._active)
        )
        assert "follow" in listener._active
        assert sorted(hub.channels()) == ["follow", "marker"]
        await a.close()
        await wait_until(
            lambda: "follow" not in listener._active, message=lambda: str(listener._active)
        )
        assert hub.channels() == ["marker"]

        # Proof that PostgreSQL itself stopped delivering: notifications from one session
        # arrive in order, so once the marker is here the others would have been too.
        before = (listener.notifications, relay.delivery.events_received, hub.deliveries)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for channel in ("follow", "other", "marker"):
                await conn.execute("SELECT pg_notify(%s, 'after unlisten')", (channel,))
        with showing_frames(marker):
            assert (await marker.next_event()).data == "after unlisten"
        after = (listener.notifications, relay.delivery.events_received, hub.deliveries)
        assert [x - y for x, y in zip(after, before, strict=True)] == [1, 1, 1]

        # And a new subscriber LISTENs again.
        c = await open_ready(relay, "/events/follow")
        try:
            await notify(dsn, "follow", "back")
            with showing_frames(c):
                assert (await c.next_event()).data == "back"
        finally:
            await c.close()
    finally:
        for client in (marker, a, b):
            await client.close()


async def test_ready_only_while_listening_when_resubscribed_during_unlisten(
    relay: Relay, dsn: str
) -> None:
    """A stream that arrives while the UNLISTEN of its channel is on the wire must not be
    told ``ready`` until the channel is LISTENed again: events sent after ``ready`` would
    otherwise be lost."""
    listener, hub = relay.listener, relay.hub
    conn = listener._conn
    assert conn is not None
    checked = 0
    for attempt in range(10):
        old = FakeStream("flicker")
        hub.subscribe(old)
        await wait_until(lambda: old.ready, message=lambda: repr(old.frames))  # noqa: B023
        hub.unsubscribe(old)
        for _ in range(100):  # a few loop turns: the listener sends the UNLISTEN
            if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                break
            await asyncio.sleep(0)
        else:
            continue  # the UNLISTEN was over before we looked: try again
        new = FakeStream("flicker")
        hub.subscribe(new)  # while the UNLISTEN is in flight
        checked += 1
        while not (
            listener._wanted.keys() == listener._active
            and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and new.ready
        ):
            if new.ready:
                assert listener.is_listening("flicker"), f"attempt {attempt}: ready, not LISTENing"
            await asyncio.sleep(0)
        await notify(dsn, "flicker", f"attempt {attempt}")
        await wait_until(
            lambda: any(b"attempt" in f for f in new.frames),  # noqa: B023
            message=lambda: repr(new.frames),  # noqa: B023
        )
        hub.unsubscribe(new)
        await wait_until(lambda: "flicker" not in listener._active)
    assert checked, "never caught the UNLISTEN in flight"


# -- one connection for everyone -----------------------------------------------------------


def own_pg_ports(dsn: str) -> set[int] | None:
    """Local ports of this process's TCP connections to the server (None: not over TCP)."""
    try:
        import psutil  # installed with pgserver (the test extra)
    except ImportError:
        return None
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "")
    if not host or host.startswith("/"):
        return None
    port = int(params.get("port") or 5432)
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }


async def test_300_clients_share_one_listener_connection(dsn: str) -> None:
    channels = ["crowd-a", "crowd-b", "crowd-c"]
    async with running_relay(dsn, heartbeat=30.0) as relay:
        paths = [f"/events/{channels[i % 3]}" for i in range(300)]
        results = await asyncio.gather(
            *(SseClient.open(HOST, relay.port, p, timeout=30) for p in paths),
            return_exceptions=True,
        )
        clients = [c for c in results if isinstance(c, SseClient)]
        try:
            assert len(clients) == 300, [r for r in results if not isinstance(r, SseClient)][:3]
            assert all(c.status == 200 for c in clients)
            async with asyncio.timeout(30):
                await asyncio.gather(*(c.wait_ready(30) for c in clients))
            assert relay.hub.stream_count == 300

            backend_pid = relay.listener._conn.pgconn.backend_pid  # type: ignore[union-attr]
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = %s",
                    (APPLICATION_NAME,),
                )
                rows = await cur.fetchall()
                ports = own_pg_ports(dsn)
                if ports is not None:
                    # Other relays may run against the same server: count this process's only.
                    ours = [pid for pid, port in rows if port in ports]
                    assert ours == [backend_pid], rows
                    cur = await conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                        (list(ports),),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    # The listener, this connection, maybe a log reader: not one per stream.
                    assert row[0] < 10
                else:
                    assert [pid for pid, _ in rows if pid == backend_pid] == [backend_pid]
            assert relay.listener.connects == 1

            for channel in channels:
                await notify(dsn, channel, f"to {channel}")
            with showing_frames(*clients):
                async with asyncio.timeout(30):
                    events = await asyncio.gather(*(c.next_event(30) for c in clients))
            assert [e.data for e in events] == [f"to {channels[i % 3]}" for i in range(300)]
        finally:
            await asyncio.gather(*(c.close() for c in clients))


# -- losing PostgreSQL ---------------------------------------------------------------------


async def terminate_listener(relay: Relay, dsn: str) -> int:
    """``pg_terminate_backend`` the relay's listening connection; returns its pid."""
    backend_pid = relay.listener._conn.pgconn.backend_pid  # type: ignore[union-attr]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid = %s",
            (APPLICATION_NAME, backend_pid),
        )
        assert await cur.fetchall() == [(True,)]
    return backend_pid


async def test_listener_killed_reconnects_and_streams_stay_open(dsn: str) -> None:
    async with running_relay(dsn, heartbeat=30.0, **FAST_RECONNECT) as relay:
        listener = relay.listener
        one = await open_ready(relay, "/events/survivor")
        two = await open_ready(relay, "/events?channel=survivor&channel=bystander")
        try:
            old_pid = await terminate_listener(relay, dsn)
            await wait_until(
                lambda: listener.reconnects == 1 and listener.healthy,
                timeout=30,
                message=lambda: f"reconnects={listener.reconnects} error={listener.last_error}",
            )
            assert listener._conn is not None
            assert listener._conn.pgconn.backend_pid != old_pid
            assert {"survivor", "bystander"} <= listener._active
            status, body = await healthz(relay)
            assert (status, body) == (200, {"status": "ok"}), body
            assert relay.health(detail=True)[1]["bus"]["connected"] is True
            # The very same streams, still open, get what is published now.
            await notify(dsn, "survivor", "after reconnect")
            await notify(dsn, "bystander", "also")
            with showing_frames(one, two):
                assert (await one.next_event()).data == "after reconnect"
                assert (await two.next_event()).data == "after reconnect"
                assert (await two.next_event()).data == "also"
            assert relay.hub.stream_count == 2
            resp = await raw_request(HOST, relay.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert b"sserelay_listener_reconnects_total 1.0" in resp.body
        finally:
            await one.close()
            await two.close()


async def test_unreachable_database_healthz_503_and_streams_wait(dsn: str) -> None:
    closed_port = make_conninfo(dsn, host=HOST, port=1, connect_timeout=2)
    relay = Relay(Settings(port=0, heartbeat=30.0, **FAST_RECONNECT), dsn=closed_port)
    await relay.start()
    try:
        await wait_until(lambda: relay.listener.last_error is not None, timeout=30)
        status, body = await healthz(relay)
        assert status == 503, body
        assert body == {"status": "unavailable", "reason": "bus unreachable"}
        detail = relay.health(detail=True)[1]["bus"]  # the operator's view (tests/test_health.py)
        assert detail["connected"] is False
        assert detail["last_error"]
        # A stream still opens (EventSource gives up on a non-200) and waits for the bus.
        client = await SseClient.open(HOST, relay.port, "/events/patient")
        try:
            assert client.status == 200
            with showing_frames(client):
                assert (await client.next_message()).retry is not None
                with pytest.raises(TimeoutError):
                    await client.next_message(timeout=0.5)  # no ": ready": nothing is live
            assert relay.hub.stream_count == 1
            assert relay.hub.channels() == ["patient"]
            assert (await healthz(relay))[0] == 503
        finally:
            await client.close()
    finally:
        await relay.shutdown()


@pytest.fixture
async def proxy(dsn: str) -> AsyncIterator[Proxy]:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "/var/run/postgresql")
    async with Proxy(host, int(params.get("port") or 5432)) as proxy:
        yield proxy


async def test_outage_then_recovery_keeps_streams_and_readies_new_ones(
    proxy: Proxy, dsn: str
) -> None:
    async with running_relay(
        make_conninfo(dsn, host=HOST, port=proxy.port), heartbeat=30.0, **FAST_RECONNECT
    ) as relay:
        listener = relay.listener
        before = await open_ready(relay, "/events/outage")
        during: SseClient | None = None
        try:
            accepted = proxy.accepted
            proxy.cut()
            await wait_until(lambda: not listener.connected, timeout=30)
            await wait_until(lambda: proxy.accepted > accepted, timeout=30)  # a retry failed
            status, body = await healthz(relay)
            assert status == 503 and body["status"] == "unavailable", body
            assert body["reason"] == "bus unreachable", body
            assert relay.health(detail=True)[1]["bus"]["last_error"]

            # A stream opened during the outage is accepted and waits.
            during = await SseClient.open(HOST, relay.port, "/events?channel=outage&channel=new")
            assert during.status == 200
            await notify(dsn, "outage", "lost: nobody is listening")

            proxy.up = True
            with showing_frames(before, during):
                await during.wait_ready(timeout=30)  # ready once the channels are live again
            await wait_until(lambda: listener.healthy, timeout=30)
            assert listener.reconnects == 1
            assert (await healthz(relay))[0] == 200

            await notify(dsn, "outage", "back")
            await notify(dsn, "new", "fresh")
            with showing_frames(before, during):
                assert (await before.next_event()).data == "back"
                assert (await during.next_event()).data == "back"
                assert (await during.next_event()).data == "fresh"
        finally:
            await before.close()
            if during is not None:
                await during.close()


async def test_probe_measures_lag(dsn: str) -> None:
    async with running_relay(dsn, heartbeat=30.0, probe_interval=0.05) as relay:
        await wait_until(lambda: relay.listener.lag is not None, timeout=30)
        resp = await raw_request(HOST, relay.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        count = [
            line
            for line in resp.body.decode().splitlines()
            if line.startswith("sserelay_notification_lag_seconds_count")
        ]
        assert count and float(count[0].split()[-1]) >= 1, resp.body
        status, health = await healthz(relay)
        assert status == 200, health
        assert health["status"] == "ok"
