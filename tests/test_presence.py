"""Presence across relays (docs/presence.md): three relay processes on one bus
(PostgreSQL, Redis, Redis Cluster), streams of several subjects spread over them;
``GET /presence`` on every relay and the bus's own rows (the SQL table, the Redis hashes)
agree; a SIGKILLed relay's entries expire with its lease; join/leave events are coalesced
and bounded under a connect/disconnect storm; bad requests get clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import sserelay
from fronts import FRONTS, serving
from processes import RelayProcess, relay_process
from sserelay import mint_token
from sserelay.testing import (
    SseClient,
    raw_request,
    running_relay,
    showing_frames,
    temporary_database,
    wait_until,
)
from streams import Feed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HOST = "127.0.0.1"
SECRET = "presence-test-secret-" + "x" * 32
LEASE = 2.0
LINGER = 1.0
MAX_EVENTS = 5


def _env(bus: Any, **extra: str) -> dict[str, str]:
    env = {
        "SSERELAY_JWT_SECRET": SECRET,
        # room-* may be read without a token (anonymous streams); priv-* needs one.
        "SSERELAY_PUBLIC_CHANNELS": "room-*",
        "SSERELAY_PRESENCE": "room-*,priv-*",
        "SSERELAY_PRESENCE_INTERVAL": "0.2",
        "SSERELAY_PRESENCE_LEASE": str(LEASE),
        "SSERELAY_PRESENCE_LINGER": str(LINGER),
        "SSERELAY_PRESENCE_MAX_EVENTS": str(MAX_EVENTS),
        **extra,
    }
    if bus.kind == "redis":
        env["SSERELAY_REDIS_PREFIX"] = bus.prefix
    return env


@contextlib.asynccontextmanager
async def _relays(
    bus: Any, tmp_path: Path, *, count: int = 3, env: dict[str, str] | None = None
) -> AsyncIterator[list[RelayProcess]]:
    async with contextlib.AsyncExitStack() as stack:
        relays = [
            await stack.enter_async_context(
                relay_process(
                    *bus.cli_args(), log=tmp_path / f"relay{i}.log", env=_env(bus, **(env or {}))
                )
            )
            for i in range(count)
        ]
        yield relays


def _token(subject: str, channels: str = "room-*") -> str:
    return mint_token(SECRET, subscribe=[channels], subject=subject, ttl=600)


async def _stream(port: int, channel: str, subject: str | None) -> SseClient:
    headers = {"Authorization": f"Bearer {_token(subject)}"} if subject else {}
    client = await SseClient.open(HOST, port, f"/events/{channel}", headers)
    try:
        assert client.status == 200, await client.body()
        with showing_frames(client):
            await _ready(client)
    except BaseException:
        await client.close()
        raise
    return client


async def _ready(client: SseClient) -> None:
    """``: ready``. A presence event may come first: the relay publishes joins on the
    channel itself, and a stream whose channel was just subscribed on the bus is given
    the channel's plain events while the relay reads the channel's log position."""
    async with asyncio.timeout(30):
        while True:
            message = await client.next_message(30)
            if "ready" in message.comments:
                return
            if message.is_event and not message.event.startswith("sserelay."):
                raise AssertionError(f"event before ready: {message}")


async def _get(port: int, path: str, token: str | None = None) -> Any:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    return await raw_request(HOST, port, request.encode())


async def _presence(port: int, channel: str) -> dict[str, Any]:
    answer = await _get(port, f"/presence/{channel}")
    assert answer.status == 200, answer.raw
    return answer.json()  # type: ignore[no-any-return]  # JSON


def _from_bus(bus: Any, channel: str) -> dict[str, Any]:
    """What :func:`sserelay.presence` reads from the bus itself."""
    if bus.kind == "redis":
        return sserelay.presence(channel, redis=bus.url, prefix=bus.prefix)
    return sserelay.presence(channel, dsn=bus.dsn)


def _from_sql(dsn: str, channel: str) -> dict[str, Any]:
    """The table as any SQL sees it: live leases only."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT subject, sum(connections)::int FROM sserelay.presence"
            " WHERE channel = %s AND expires_at > now() GROUP BY subject ORDER BY subject",
            (channel,),
        ).fetchall()
    return {
        "channel": channel,
        "subjects": [s for s, _ in rows if s],
        "anonymous": sum(n for s, n in rows if not s),
        "connections": sum(n for _, n in rows),
    }


async def _agree(bus: Any, ports: list[int], channel: str, want: dict[str, Any]) -> None:
    """Every relay's /presence, the bus read and (PostgreSQL) the SQL table say ``want``."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        for port in ports:
            seen[f"relay :{port}"] = await _presence(port, channel)
        seen["bus"] = await asyncio.to_thread(_from_bus, bus, channel)
        if bus.kind == "postgres":
            seen["sql"] = await asyncio.to_thread(_from_sql, bus.dsn, channel)
        return all(view == want for view in seen.values())

    await wait_until(check, timeout=30, interval=0.1, message=lambda: f"want {want}, saw {seen}")


async def test_presence_across_three_relays_agrees_with_the_bus(
    durable_bus: Any, tmp_path: Path
) -> None:
    channel = f"room-{uuid.uuid4().hex[:8]}"
    subjects = [f"u{i}" for i in range(5)]
    async with _relays(durable_bus, tmp_path) as relays:
        ports = [r.port for r in relays]
        streams: list[tuple[str | None, SseClient]] = []
        try:
            for i in range(10):  # two streams per subject, on different relays
                subject = subjects[i % 5]
                streams.append((subject, await _stream(ports[i % 3], channel, subject)))
            for port in ports[:2]:  # anonymous: no token
                streams.append((None, await _stream(port, channel, None)))
            want = {"channel": channel, "subjects": subjects, "anonymous": 2, "connections": 12}
            await _agree(durable_bus, ports, channel, want)
            # u0's streams end: it goes once it has lingered; an anonymous one ends at once.
            for who, client in list(streams):
                if who == "u0":
                    await client.close()
                    streams.remove((who, client))
            anonymous = next(c for s, c in streams if s is None)
            await anonymous.close()
            streams.remove((None, anonymous))
            want = {"channel": channel, "subjects": subjects[1:], "anonymous": 1, "connections": 9}
            await _agree(durable_bus, ports, channel, want)
        finally:
            for _, client in streams:
                await client.close()


async def test_a_killed_relays_entries_expire_with_its_lease(
    durable_bus: Any, tmp_path: Path
) -> None:
    channel = f"room-{uuid.uuid4().hex[:8]}"
    async with _relays(durable_bus, tmp_path, env={"SSERELAY_PRESENCE_EVENTS": "1"}) as relays:
        ports = [r.port for r in relays]
        observer = Feed(await _stream(ports[0], channel, None))
        kept = await _stream(ports[0], channel, "stays")
        doomed = [await _stream(ports[2], channel, name) for name in ("killed", None)]
        try:
            want = {"channel": channel, "subjects": ["killed", "stays"], "anonymous": 2}
            want["connections"] = 4
            await _agree(durable_bus, ports, channel, want)
            relays[2].proc.kill()  # SIGKILL: no goodbye, its rows stay until their lease ends
            await relays[2].wait(timeout=30)
            want = {"channel": channel, "subjects": ["stays"], "anonymous": 1, "connections": 2}
            await _agree(durable_bus, ports[:2], channel, want)
            # The relays that remain say that "killed" left with it (once).
            await wait_until(
                lambda: _kinds(_events(observer), "killed") == ["sserelay.join", "sserelay.leave"],
                timeout=30,
                message=lambda: str(_events(observer)),
            )
        finally:
            await observer.close()
            await kept.close()
            for client in doomed:
                await client.close()


def _events(feed: Feed) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in feed.events]


async def _flushes(ports: list[int]) -> int:
    total = 0
    for port in ports:
        text = (await _get(port, "/metrics")).body.decode()
        match = re.search(r"^sserelay_presence_flushes_total (\S+)$", text, re.M)
        assert match, text[:2000]
        total += int(float(match.group(1)))
    return total


def _kinds(events: list[tuple[str, str]], subject: str) -> list[str]:
    return [kind for kind, data in events if data == f'{{"subject":"{subject}"}}']


async def _has(port: int, channel: str, subject: str) -> bool:
    return subject in (await _presence(port, channel))["subjects"]


async def _flushed_since(ports: list[int], counts: list[int], more: int) -> bool:
    return all([await _flushes([p]) >= n + more for p, n in zip(ports, counts, strict=True)])


async def test_join_and_leave_are_coalesced_and_bounded_under_a_storm(
    durable_bus: Any, tmp_path: Path
) -> None:
    channel = f"room-{uuid.uuid4().hex[:8]}"
    env = {"SSERELAY_PRESENCE_EVENTS": "1", "SSERELAY_PRESENCE_LINGER": "3"}
    async with _relays(durable_bus, tmp_path, env=env) as relays:
        ports = [r.port for r in relays]
        observer = Feed(await _stream(ports[0], channel, None))  # anonymous: no events of its own
        held: list[SseClient] = []
        try:
            flushes_before = await _flushes(ports)
            held.append(await _stream(ports[1], channel, "steady"))
            # "back" is seen present, leaves and comes back at once on another relay.
            back = await _stream(ports[0], channel, "back")
            await wait_until(lambda: _has(ports[2], channel, "back"), timeout=30)
            await back.close()
            held.append(await _stream(ports[1], channel, "back"))
            # A storm: "steady" keeps one stream and flaps others on every relay; "flap"
            # connects and disconnects again and again; 20 others arrive at once.
            for cycle in range(30):
                for subject in ("steady", "flap"):
                    client = await _stream(ports[cycle % 3], channel, subject)
                    await client.close()
            crowd = [f"c{i:02}" for i in range(20)]
            for subject in crowd:
                held.append(await _stream(ports[2], channel, subject))
            want = {
                "channel": channel,
                "subjects": sorted([*crowd, "back", "steady"]),
                "anonymous": 1,
                "connections": 23,
            }
            await _agree(durable_bus, ports, channel, want)
            # Every relay writes past the coalescing window (3 s; writes every ~0.2 s):
            # whatever the storm left lingering has gone, with its events.
            counts = [await _flushes([port]) for port in ports]
            await wait_until(lambda: _flushed_since(ports, counts, 25), timeout=60, interval=0.2)
            events = [(e.event, e.data) for e in observer.events]
            assert _kinds(events, "back") == ["sserelay.join"], events
            assert _kinds(events, "steady") == ["sserelay.join"], events
            flap = _kinds(events, "flap")
            # flap may have come and gone between two writes (nothing) or been seen: then
            # each join is followed by its leave (never twice from two relays).
            assert flap == ["sserelay.join", "sserelay.leave"] * (len(flap) // 2), events
            flushes = await _flushes(ports) - flushes_before
            # The crowd came in at most a few writes of one relay: past MAX_EVENTS per write,
            # one sserelay.presence event counts the rest.
            joined = [d for k, d in events if k == "sserelay.join" and '"c' in d]
            summaries = [d for k, d in events if k == "sserelay.presence"]
            assert summaries, events
            counted = sum(json.loads(d)["joined"] for d in summaries)
            assert len(joined) + counted == len(crowd), events
            # The documented bound: per relay, channel and write, MAX_EVENTS + 1 events.
            assert len(events) <= flushes * (MAX_EVENTS + 1), (len(events), flushes)
        finally:
            await observer.close()
            for client in held:
                await client.close()


async def test_anonymous_streams_are_counted_without_tokens(durable_bus: Any) -> None:
    channel = f"room-{uuid.uuid4().hex[:8]}"
    async with durable_bus.relay(presence=("room-*",), presence_interval=0.2) as relay:
        clients = [await _stream(relay.port, channel, None) for _ in range(3)]
        try:
            want = {"channel": channel, "subjects": [], "anonymous": 3, "connections": 3}
            await _agree(durable_bus, [relay.port], channel, want)
        finally:
            for client in clients:
                await client.close()


@pytest.mark.postgres_only
async def test_bad_requests_get_clear_errors(durable_bus: Any) -> None:
    settings = {"presence": ("room-*", "priv-*"), "jwt_secret": SECRET}
    async with durable_bus.relay(public_channels=("room-*",), **settings) as relay:
        port = relay.port

        async def refused(path: str, status: int, text: str, token: str | None = None) -> None:
            answer = await _get(port, path, token)
            assert answer.status == status, answer.raw
            assert text in answer.json()["error"], answer.raw

        await refused("/presence/lobby", 404, "presence is not enabled for channel 'lobby'")
        await refused("/presence/", 400, "invalid channel")
        await refused("/presence/a%FFb", 400, "not valid UTF-8")
        await refused("/presence/" + "x" * 300, 400, "invalid channel")
        await refused("/presence", 404, "use /presence/{channel}")
        await refused("/presence/priv-1", 401, "needs a token")
        await refused("/presence/priv-1", 401, "", token="not-a-token")
        await refused("/presence/priv-1", 403, "does not allow", token=_token("u", "other-*"))
        ok = await _get(port, "/presence/priv-1", _token("u", "priv-*"))
        assert ok.status == 200 and ok.json()["subjects"] == [], ok.raw
        assert (await _get(port, "/presence/room-1")).status == 200  # public: no token
        # "presence" is an endpoint now: as a channel, under /events/ only.
        await refused("/presence?x=1", 404, "use /presence/{channel}")
        request = b"POST /presence/room-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert (await raw_request(HOST, port, request)).status == 405
    with pytest.raises(sserelay.ConfigError):
        sserelay.presence("room-1")
    with pytest.raises(sserelay.ConfigError):
        sserelay.presence("room-1", dsn=durable_bus.dsn, redis="redis://127.0.0.1:1/0")
    with pytest.raises(sserelay.InvalidChannel):
        sserelay.presence("", dsn=durable_bus.dsn)


async def test_a_relay_without_the_presence_table_keeps_serving(dsn: str) -> None:
    """No ``sserelay migrate``: presence writes fail (warned once), streams go on and
    ``/presence`` says it cannot read (503), not a crash."""
    with temporary_database(dsn) as bare:
        await _unmigrated(bare)


async def _unmigrated(dsn: str) -> None:
    async with running_relay(dsn, presence=("room-*",), presence_interval=0.2) as relay:
        client = await _stream(relay.port, "room-1", None)
        try:
            await wait_until(lambda: relay.presence is not None and relay.presence.flush_failures)
            answer = await _get(relay.port, "/presence/room-1")
            assert answer.status == 503 and "cannot be read" in answer.json()["error"]
            assert relay.problem() is None
            assert relay.health(detail=True)[1]["presence"]["writing"] is False
        finally:
            await client.close()


@pytest.mark.parametrize("kind", FRONTS)
async def test_the_endpoint_is_the_same_on_every_front(kind: str, durable_dsn: str) -> None:
    settings = {"presence": ("room-*",), "presence_interval": 0.2, "jwt_secret": SECRET}
    async with serving(kind, durable_dsn, public_channels=("room-*",), **settings) as front:
        client = await front.open("/events/room-1", {"Authorization": f"Bearer {_token('ada')}"})
        try:
            with showing_frames(client):
                await client.wait_ready(timeout=30)
            want = {"channel": "room-1", "subjects": ["ada"], "anonymous": 0, "connections": 1}

            async def seen() -> bool:
                answer = await front.get("/presence/room-1", {"Origin": "https://a.example"})
                return answer.status == 200 and answer.json() == want

            await wait_until(seen, timeout=30)
            refused = await front.get("/presence/lobby")
            assert refused.status == 404 and "not enabled" in refused.json()["error"]
            bad = await front.get("/presence/" + "x" * 100)
            assert bad.status == 400
        finally:
            await client.close()


async def test_a_present_stream_is_revoked_and_its_ending_recorded(durable_dsn: str) -> None:
    """Presence counts a stream on its lease; the same lease is what a revocation and the
    record of endings read: a present subject's stream is revoked like any other, leaves
    the presence, and its ending names the subject and the reason."""
    token = mint_token(SECRET, subscribe=["room-*"], subject="ada", ttl=600)
    settings = dict(jwt_secret=SECRET, presence=("room-*",), presence_interval=0.2)
    async with running_relay(durable_dsn, **settings, presence_lease=1.0) as relay:
        assert relay.presence is not None
        stream = await SseClient.open(
            HOST, relay.port, "/events/room-r", {"Authorization": f"Bearer {token}"}
        )
        try:
            await stream.wait_ready()
            assert relay.presence.tracker.count("room-r", "ada") == 1
            await asyncio.to_thread(sserelay.revoke, durable_dsn, subject="ada")
            while (await stream.next_event(timeout=10)).event != "sserelay.revoked":
                pass
            await wait_until(lambda: relay.presence.tracker.count("room-r", "ada") == 0)
            ending = relay.hub.endings.last(1)[0]
            assert (ending.reason, ending.subject, ending.channels) == (
                "revoked",
                "ada",
                ("room-r",),
            )
        finally:
            await stream.close()
