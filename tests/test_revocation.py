"""Revocation across relays: three relay processes on one bus (PostgreSQL, Redis, a Redis
Cluster: ``durable_bus``); ``sserelay.revoke`` ends the covered streams on every relay, a
new stream with an old token gets 401, a token issued after works; by subject, by jti, by
channel pattern; revocations survive a relay restart and a lost feed connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import sserelay
from processes import RelayProcess, relay_process
from sserelay import mint_token
from sserelay.bus.redis.publish import RedisBus as RedisPublisher
from sserelay.testing import SseClient, StreamClosed, raw_request, showing_frames, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HOST = "127.0.0.1"
SECRET = "revocation-test-secret-of-at-least-32-bytes"
RELAYS = 3
#: Generous: the bound the issue sets is 1 s; the measured latency is printed, not asserted.
CLOSE_WITHIN = 15.0


def token(subject: str, pattern: str = "room-*", **options: Any) -> str:
    return mint_token(SECRET, subscribe=[pattern], subject=subject, ttl=600, **options)


async def revoke(bus: Any, **what: str) -> float:
    """``sserelay.revoke`` on the test's bus (in a thread: it is synchronous)."""
    if bus.kind == "postgres":
        return await asyncio.to_thread(sserelay.revoke, bus.dsn, **what)
    target = RedisPublisher(bus.url, prefix=bus.prefix)
    try:
        return await asyncio.to_thread(sserelay.revoke, target, **what)
    finally:
        target.close()


@contextlib.asynccontextmanager
async def relays(
    bus: Any, tmp_path: Path, count: int = RELAYS
) -> AsyncIterator[list[RelayProcess]]:
    env = {"SSERELAY_JWT_SECRET": SECRET}
    if bus.kind == "redis":
        env["SSERELAY_REDIS_PREFIX"] = bus.prefix
    async with contextlib.AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                relay_process(
                    *bus.cli_args(), log=tmp_path / f"relay{i}-{uuid.uuid4().hex[:4]}.log", env=env
                )
            )
            for i in range(count)
        ]
        # Each relay has read the revocations in force once (its feed is up).
        for relay in started:
            await wait_until(
                lambda relay=relay: _feed_up(relay.port),
                timeout=30,
                interval=0.1,
                message=lambda: started[0].stderr()[-2000:],
            )
        yield started


async def _feed_up(port: int) -> bool:
    request = f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    reply = await raw_request(HOST, port, request)
    return b"sserelay_revocation_feed_connected 1.0" in reply.body


async def stream(port: int, channel: str, bearer: str) -> SseClient:
    client = await SseClient.open(
        HOST, port, f"/events/{channel}", {"Authorization": f"Bearer {bearer}"}
    )
    assert client.status == 200, await client.body()
    with showing_frames(client):
        await client.wait_ready(timeout=30)
    return client


async def refused(port: int, channel: str, bearer: str) -> tuple[int, str]:
    client = await SseClient.open(
        HOST, port, f"/events/{channel}", {"Authorization": f"Bearer {bearer}"}
    )
    try:
        return client.status, (await client.body()).decode()
    finally:
        await client.close()


async def ended_at(client: SseClient, timeout: float) -> float:
    """When the server ended ``client``'s stream (monotonic), after its farewell."""
    await client.wait_closed(timeout)
    return time.monotonic()


def saw_farewell(client: SseClient) -> bool:
    events = [m for m in client.seen if m.is_event]
    return bool(events) and events[-1].event == "sserelay.revoked"


async def still_open(client: SseClient) -> bool:
    """Nothing but pings arrives: the stream was not ended."""
    try:
        message = await client.next_message(timeout=0.5)
    except TimeoutError:
        return True
    except StreamClosed:
        return False
    return not message.is_event


async def test_revoke_subject_on_every_relay(durable_bus: Any, tmp_path: Path) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    victim, bystander = f"u{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    old = token(victim)
    async with relays(durable_bus, tmp_path) as started:
        ports = [r.port for r in started]
        victims = [await stream(port, room, old) for port in ports for _ in range(2)]
        others = [await stream(port, room, token(bystander)) for port in ports]
        try:
            began = time.monotonic()
            await revoke(durable_bus, subject=victim)
            ends = await asyncio.gather(*(ended_at(c, CLOSE_WITHIN) for c in victims))
            latencies = [end - began for end in ends]
            print(
                f"{durable_bus.kind}: subject revocation ended {len(victims)} streams on "
                f"{RELAYS} relays in {min(latencies):.3f}-{max(latencies):.3f} s"
            )
            for client in victims:
                assert saw_farewell(client), client.seen
                assert any(m.retry is not None and m.retry >= 5000 for m in client.seen)
            for client in others:
                assert await still_open(client)
            for port in ports:
                status, body = await refused(port, room, old)
                assert status == 401 and "revoked" in body, (status, body)
            fresh = await stream(ports[0], room, token(victim))
            await fresh.close()
        finally:
            for client in [*victims, *others]:
                await client.close()


async def test_revoke_jti_and_channel_pattern(durable_bus: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    room, lobby = f"room-{tag}", f"lobby-{tag}"
    user = f"u{tag}"
    one, another = token(user, "*", jti=f"j1-{tag}"), token(user, "*", jti=f"j2-{tag}")
    async with relays(durable_bus, tmp_path, count=2) as started:
        ports = [r.port for r in started]
        first = [await stream(port, lobby, one) for port in ports]
        second = [await stream(port, lobby, another) for port in ports]
        in_room = [await stream(port, room, another) for port in ports]
        try:
            await revoke(durable_bus, jti=f"j1-{tag}")
            for client in first:
                await client.wait_closed(CLOSE_WITHIN)
                assert saw_farewell(client), client.seen
            assert [await still_open(c) for c in second] == [True, True]
            assert (await refused(ports[1], lobby, one))[0] == 401
            # By channel pattern: the room's streams end, the lobby's stay.
            await revoke(durable_bus, channel=f"room-{tag}*")
            for client in in_room:
                await client.wait_closed(CLOSE_WITHIN)
                assert saw_farewell(client), client.seen
            assert [await still_open(c) for c in second] == [True, True]
            status, body = await refused(ports[0], room, another)
            assert status == 401 and "revoked" in body, body
            # The old token still reads what the pattern does not cover; a new one reads the room.
            await (await stream(ports[0], lobby, another)).close()
            await (await stream(ports[1], room, token(user, "*"))).close()
        finally:
            for client in [*first, *second, *in_room]:
                await client.close()


async def test_revocations_survive_a_restart(durable_bus: Any, tmp_path: Path) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    user = f"u{uuid.uuid4().hex[:6]}"
    old = token(user)
    await revoke(durable_bus, subject=user)
    # Relays started after the revocation read it when they start.
    async with relays(durable_bus, tmp_path, count=1) as started:
        status, body = await refused(started[0].port, room, old)
        assert status == 401 and "revoked" in body, body
        await (await stream(started[0].port, room, token(user))).close()


async def test_a_revocation_made_while_the_feed_was_away_is_applied(
    durable_bus: Any, tmp_path: Path
) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    user = f"u{uuid.uuid4().hex[:6]}"
    async with relays(durable_bus, tmp_path, count=1) as started:
        client = await stream(started[0].port, room, token(user))
        try:
            # Write the revocation without its control message (as if the relay had been
            # disconnected when it was sent), then drop the feed's connection: it reloads.
            await _revoke_silently(durable_bus, user)
            assert await still_open(client)
            await _kill_feed(durable_bus)
            await client.wait_closed(CLOSE_WITHIN)
            assert saw_farewell(client), client.seen
        finally:
            await client.close()


async def _revoke_silently(bus: Any, subject: str) -> None:
    if bus.kind == "postgres":
        async with await psycopg.AsyncConnection.connect(bus.dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO sserelay.revocations (kind, value) VALUES ('subject', %s)",
                (subject,),
            )
        return
    client: Any = (
        redis.RedisCluster.from_url(bus.url) if bus.cluster else redis.Redis.from_url(bus.url)
    )
    with client:
        client.zadd(bus.prefix + "sserelay:revocations", {f"subject:{subject}": time.time()})


async def _kill_feed(bus: Any) -> None:
    if bus.kind == "postgres":
        async with await psycopg.AsyncConnection.connect(bus.dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'sserelay-revocations' AND datname = current_database()"
            )
        return
    # The feed's connections are named; on a cluster it subscribes on the URL's node.
    with redis.Redis.from_url(bus.url) as client:
        for entry in client.client_list():
            if entry.get("name") == "sserelay-revocations":
                with contextlib.suppress(redis.ResponseError):
                    client.client_kill_filter(_id=entry["id"])
