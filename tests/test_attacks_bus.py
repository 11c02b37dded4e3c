"""The holes an outside attack found on the bus side, each reproduced against real servers:
a payload the database's encoding cannot give as text (``SQL_ASCII``), a client moving to a
relay whose listener lags, and a database that stops answering without closing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from proxy import Proxy
from sserelay import apublish_durable, mint_token
from sserelay.bus.postgres.schema import migrate
from sserelay.testing import SseClient, raw_request, running_relay, showing_frames, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(120)]

HOST = "127.0.0.1"


# -- 3. a payload that is not text in the database's encoding --------------------------------


@pytest.fixture
def sql_ascii_dsn(dsn: str) -> Iterator[str]:
    """A database of its own in ``SQL_ASCII``, which stores any bytes it is given."""
    name = f"sserelay_ascii_{time.monotonic_ns()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_a_payload_that_is_not_utf8_never_ends_the_listener(sql_ascii_dsn: str) -> None:
    async with running_relay(sql_ascii_dsn, heartbeat=30.0) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/bytes")
        try:
            with showing_frames(client):
                await client.wait_ready()
                async with await psycopg.AsyncConnection.connect(
                    sql_ascii_dsn, autocommit=True, client_encoding="UTF8"
                ) as conn:
                    # 0xE9 alone: é in Latin-1, not UTF-8. SQL_ASCII passes it through.
                    await conn.execute("NOTIFY bytes, E'caf\\xe9'")
                    await conn.execute("NOTIFY bytes, 'café'")
                    await conn.execute("NOTIFY bytes, 'after'")
                got = [(await client.next_event()).data for _ in range(3)]
            assert got == ["caf\ufffd", "café", "after"]
            assert relay.listener.failures == 0 and relay.listener.connected
            assert relay.listener.undecodable == 1  # type: ignore[attr-defined]
        finally:
            await client.close()


# -- 4. a client moving to a relay whose listener lags ---------------------------------------


async def test_resume_is_exact_on_a_relay_whose_listener_lags(durable_dsn: str) -> None:
    """A client read events 1-20 from relay A, then reconnects to relay B, whose listener
    has not delivered them yet: B holds the stream in catch-up until its own position
    reaches 20, so the client sees 21 onwards, each once."""
    async with (
        running_relay(durable_dsn, heartbeat=30.0) as a,
        running_relay(durable_dsn, heartbeat=30.0) as b,
    ):
        warm = await SseClient.open(HOST, b.port, "/events/moving")  # B follows the channel
        first = await SseClient.open(HOST, a.port, "/events/moving")
        try:
            for client in (warm, first):
                await client.wait_ready()
            # B's listener stops reading: what is published now waits in its socket.
            stalled = asyncio.Event()
            step = b.listener._step  # type: ignore[attr-defined]

            async def stalled_step(conn: Any) -> None:
                await stalled.wait()
                await step(conn)

            b.listener._step = stalled_step  # type: ignore[attr-defined]
            for i in range(1, 21):
                await apublish_durable(durable_dsn, "moving", f"m{i}")
            with showing_frames(first):
                seen = [await first.next_event() for _ in range(20)]
            assert seen[-1].id == "20"
            assert b.delivery.position("moving") < 20
            moved = await SseClient.open(HOST, b.port, "/events/moving", {"Last-Event-ID": "20"})
            try:
                assert moved.status == 200
                await asyncio.sleep(0.2)  # B cannot know yet; the stream must not start from 0
                stalled.set()
                for i in range(21, 26):
                    await apublish_durable(durable_dsn, "moving", f"m{i}")
                with showing_frames(moved):
                    got = [(e.id, e.data) for e in [await moved.next_event() for _ in range(5)]]
                assert got == [(str(i), f"m{i}") for i in range(21, 26)]
                with pytest.raises(TimeoutError):
                    await moved.next_event(timeout=1)  # and nothing twice
            finally:
                await moved.close()
        finally:
            await warm.close()
            await first.close()


async def test_an_id_the_log_never_gave_starts_from_now(durable_dsn: str) -> None:
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        await apublish_durable(durable_dsn, "ahead", "one")
        client = await SseClient.open(HOST, relay.port, "/events/ahead", {"Last-Event-ID": "999"})
        try:
            with showing_frames(client):
                await client.wait_ready()
                await apublish_durable(durable_dsn, "ahead", "two")
                event = await client.next_event()
            assert (event.id, event.data) == ("2", "two")
        finally:
            await client.close()


# -- 13. a database that stops answering -----------------------------------------------------


async def test_a_hung_database_is_noticed_within_the_probe_interval(dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or HOST)
    async with Proxy(host, int(params.get("port") or 5432)) as proxy:
        through = make_conninfo(dsn, host=HOST, port=proxy.port)
        secret = "hung-test-secret-0123456789abcdef0"
        settings = {"probe_interval": 1.0, "probe_timeout": 1.0, "jwt_secret": secret}
        async with running_relay(through, heartbeat=30.0, **settings) as relay:
            await wait_until(lambda: relay.problem() is None, timeout=30)
            proxy.freeze()
            frozen = time.monotonic()
            await wait_until(lambda: relay.problem() is not None, timeout=30)
            noticed = time.monotonic() - frozen
            response = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert response.status == 503
            assert response.json() == {"status": "unavailable", "reason": "bus not answering"}
            admin = mint_token(secret, admin=True, ttl=60)
            await wait_until(lambda: relay.listener.last_error is not None, timeout=30)
            detail = await raw_request(
                HOST,
                relay.port,
                f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {admin}\r\n\r\n".encode(),
            )
            error = json.loads(detail.body)["bus"]["last_error"]
            assert "did not answer" in error and "within 1s" in error, error
            # Noticed within the probe interval plus its timeout, with a margin for load.
            assert noticed < 1.0 + 1.0 + 3.0, noticed
            proxy.thaw()
            proxy.cut()  # the frozen connection is gone; the next one is fine
            proxy.up = True
            await wait_until(lambda: relay.problem() is None, timeout=30)


# -- schema version 3 on an existing database ------------------------------------------------


def test_migrating_to_version_3_keeps_ids_and_moves_notifications(durable_dsn: str) -> None:
    """Already at the latest version (the fixture migrated): migrate is a no-op, and
    sserelay.publish notifies the durable name only."""
    assert migrate(durable_dsn) >= 3
    with psycopg.connect(durable_dsn, autocommit=True) as conn:
        durable = conn.execute("SELECT sserelay.notify_channel('c')").fetchone()
        assert durable is not None and durable[0].startswith("sserelay.d.")
        conn.execute("LISTEN c")
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(durable[0])))
        conn.execute("SELECT sserelay.publish('c', 'x')")
        notes = list(conn.notifies(timeout=2, stop_after=1))
        assert [n.channel for n in notes] == [durable[0]]
