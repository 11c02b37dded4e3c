"""Redis as the bus: what is particular to it (the behaviour both brokers share is in
test_relay_e2e.py and test_brokers.py, parametrised).

Every test works under a key and channel prefix of its own on the shared test server
(``SSERELAY_TEST_REDIS``) and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest
import redis
import redis.asyncio

import sserelay
from sserelay import cli
from sserelay.access.tokens import mint_token
from sserelay.bus.redis.listener import CLIENT_NAME
from sserelay.bus.redis.publish import RedisBus
from sserelay.bus.redis.scripts import MAX_RAW_PAYLOAD_BYTES, stream_key
from sserelay.cli.common import bus_settings
from sserelay.config import Settings, load_settings, settings_from_env
from sserelay.errors import ConfigError, InvalidChannel, InvalidEvent, PayloadTooLarge
from sserelay.relay import Relay
from sserelay.testing import SseClient, raw_request, running_relay, showing_frames, wait_until
from sserelay.wire.ids import StreamEntryIds, entry_id, parse_last_event_id
from sserelay.wire.ids import entry_position as position

HOST = "127.0.0.1"
IDS = StreamEntryIds()


# -- pure logic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["0-0", "0-1", "1718000000000-0", "1718000000000-7", f"{2**64 - 1}-{2**64 - 1}"]
)
def test_entry_ids_map_to_integers_losslessly(text: str) -> None:
    assert entry_id(position(text)) == text


def test_entry_id_integers_keep_the_stream_order() -> None:
    ids = ["0-1", "5-0", "5-1", "5-10", "6-0", "1718000000000-0", "1718000000000-2"]
    assert sorted(ids, key=position) == ids
    assert sorted(position(i) for i in ids) == [position(i) for i in ids]


def test_last_event_id_accepts_entry_ids_and_composites() -> None:
    assert parse_last_event_id("1718000000000-3", ("a",), IDS) == {"a": position("1718000000000-3")}
    assert parse_last_event_id("5-1.0-0", ("b", "a"), IDS) == {"a": position("5-1"), "b": 0}
    for bad in ["1-2-3", "-1", "1-", "x-1", f"{2**64}-0", "1-٣"]:
        with pytest.raises(ValueError):
            parse_last_event_id(bad, ("a",), IDS)


def test_choosing_the_bus() -> None:
    assert Settings().bus == "postgres"
    assert Settings(redis_url="redis://h").bus == "redis"
    # Both set: PostgreSQL unless asked (a REDIS_URL set for something else changes nothing).
    assert Settings(dsn="postgresql://h/db", redis_url="redis://h").bus == "postgres"
    assert Settings(dsn="postgresql://h/db", redis_url="redis://h", broker="redis").bus == "redis"
    assert Settings(redis_url="redis://h", broker="postgres").bus == "postgres"
    with pytest.raises(ConfigError, match="no Redis URL"):
        Settings(broker="redis")
    with pytest.raises(ConfigError, match="postgres or redis"):
        Settings(broker="kafka", redis_url="redis://h")
    with pytest.raises(ConfigError, match="redis://"):
        Settings(redis_url="http://h")


def test_bus_settings_from_the_environment() -> None:
    env = {"REDIS_URL": "redis://a", "SSERELAY_BROKER": "Redis", "SSERELAY_REDIS_PREFIX": "p:"}
    assert settings_from_env(env) == {
        "redis_url": "redis://a",
        "broker": "redis",
        "redis_prefix": "p:",
    }
    # sserelay's own name wins over the common one.
    env = {"REDIS_URL": "redis://a", "SSERELAY_REDIS_URL": "redis://b"}
    assert settings_from_env(env)["redis_url"] == "redis://b"


def test_cli_redis_flag_means_redis_even_with_a_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://h/db")
    args = cli.build_parser().parse_args(["publish", "--redis", "redis://h", "c", "d"])
    assert bus_settings(args).bus == "redis"
    args = cli.build_parser().parse_args(["publish", "c", "d"])
    assert bus_settings(args).bus == "postgres"
    monkeypatch.setenv("REDIS_URL", "redis://h")
    monkeypatch.setenv("SSERELAY_BROKER", "redis")
    assert bus_settings(cli.build_parser().parse_args(["publish", "c", "d"])).bus == "redis"
    assert load_settings().bus == "redis"


# -- against the test server ---------------------------------------------------------------


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"sserelay-test-{uuid.uuid4().hex[:10]}:"
    yield value
    with redis.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(match=value + "*", count=500):
            client.delete(key)


@pytest.fixture
async def relay(redis_url: str, prefix: str) -> AsyncIterator[Relay]:
    async with running_relay(None, redis_url=redis_url, redis_prefix=prefix, heartbeat=30.0) as r:
        yield r


async def numsub(redis_url: str, channel: str) -> int:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


def own_redis_ports(redis_url: str) -> set[int]:
    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("port", 6379)
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }


@pytest.mark.e2e
async def test_300_streams_share_one_connection_that_follows_subscribers(
    relay: Relay, redis_url: str, prefix: str
) -> None:
    channels = ["crowd-a", "crowd-b", "crowd-c"]
    paths = [f"/events/{channels[i % 3]}" for i in range(300)]
    clients = await asyncio.gather(
        *(SseClient.open(HOST, relay.port, p, timeout=30) for p in paths)
    )
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(c.wait_ready(30) for c in clients))
        for channel in channels:
            assert await numsub(redis_url, prefix + channel) == 1  # one subscription each
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            listed = await client.client_list()
        ports = own_redis_ports(redis_url)
        ours = [c for c in listed if int(c["addr"].rsplit(":", 1)[1]) in ports]
        listeners = [c for c in ours if c["name"] == CLIENT_NAME]
        assert [int(c["id"]) for c in listeners] == [relay.listener.client_id], ours
        # Three channels (each under its plain and its durable name) and its probe channel.
        assert int(listeners[0]["sub"]) == 7
        assert len(ours) < 10  # the listener, a reader or two, this test's client: not 300

        async with redis.asyncio.Redis.from_url(redis_url) as client:
            for channel in channels:
                await client.publish(prefix + channel, f"to {channel}")
        with showing_frames(*clients):
            got = await asyncio.gather(*(c.next_event(30) for c in clients))
        assert [e.data for e in got] == [f"to {channels[i % 3]}" for i in range(300)]
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    await wait_until(lambda: relay.hub.channel_count == 0)

    async def unsubscribed() -> bool:
        return all([await numsub(redis_url, prefix + c) == 0 for c in channels])

    await wait_until(unsubscribed, timeout=10, message="still subscribed")


@pytest.mark.e2e
async def test_prefix_keeps_deployments_apart(relay: Relay, redis_url: str, prefix: str) -> None:
    client = await SseClient.open(HOST, relay.port, "/events/lobby")
    try:
        await client.wait_ready()
        async with redis.asyncio.Redis.from_url(redis_url) as r:
            await r.publish("lobby", "another deployment's")
            await r.publish("other:" + prefix + "lobby", "nor this")
            await r.publish(prefix + "lobby", "ours")
        with showing_frames(client):
            assert (await client.next_event()).data == "ours"
    finally:
        await client.close()


@pytest.mark.e2e
async def test_unreachable_redis_healthz_503_and_streams_wait() -> None:
    relay = Relay(
        Settings(port=0, redis_url="redis://127.0.0.1:1/0", reconnect_min=0.05, reconnect_max=0.2)
    )
    await relay.start()
    try:
        await wait_until(lambda: relay.listener.last_error is not None, timeout=30)
        resp = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        body = resp.json()
        assert resp.status == 503, body
        assert body == {"status": "unavailable", "reason": "bus unreachable"}
        detail = relay.health(detail=True)[1]["bus"]
        assert (detail["broker"], detail["connected"]) == ("redis", False)
        assert detail["last_error"]
        client = await SseClient.open(HOST, relay.port, "/events/patient")
        try:
            assert client.status == 200
            assert (await client.next_message()).retry is not None
            with pytest.raises(TimeoutError):
                await client.next_message(timeout=0.5)  # no ": ready": nothing is live
        finally:
            await client.close()
    finally:
        await relay.shutdown()


@pytest.mark.e2e
async def test_probe_measures_lag_and_metrics_report_the_broker(
    redis_url: str, prefix: str
) -> None:
    async with running_relay(
        None, redis_url=redis_url, redis_prefix=prefix, probe_interval=0.05
    ) as relay:
        await wait_until(lambda: relay.listener.lag is not None, timeout=30)
        resp = await raw_request(HOST, relay.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        text = resp.body.decode()
        assert "sserelay_listener_connected 1.0" in text
        assert "sserelay_notification_lag_seconds_count" in text
        resp = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert resp.status == 200 and resp.json() == {"status": "ok"}, resp.body
        assert relay.health(detail=True)[1]["bus"]["broker"] == "redis"


# -- publishing -----------------------------------------------------------------------------


async def test_publish_api_takes_a_redis_url(redis_url: str, prefix: str) -> None:
    channel = f"c{uuid.uuid4().hex[:8]}"
    bus = RedisBus(redis_url, prefix=prefix)
    try:
        first = await sserelay.apublish(bus, channel, {"n": 1}, event="e")
        assert isinstance(first, str) and position(first) > 0
        second = await asyncio.to_thread(sserelay.publish, bus, channel, "two")
        assert isinstance(second, str) and position(second) > position(first)
        assert await sserelay.apublish(bus, channel, "raw", durable=False) is None
        assert await sserelay.apublish(bus, channel, "with id", id=7, durable=False) is None
        with pytest.raises(InvalidEvent, match="Redis stream, which numbers"):
            await sserelay.apublish(bus, channel, "with id", id=7)  # the stream numbers events
        with pytest.raises(PayloadTooLarge):
            await sserelay.apublish(bus, channel, "x" * MAX_RAW_PAYLOAD_BYTES, durable=False)
        with pytest.raises(InvalidChannel):
            await sserelay.apublish(bus, "", "x")
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            entries = await client.xrange(stream_key(prefix, channel))
        assert [(e[0].decode(), e[1].get(b"d"), e[1].get(b"e")) for e in entries] == [
            (first, b'{"n":1}', b"e"),
            (second, b"two", None),
        ]
        assert entries[1][1][b"p"].decode() == first  # each entry names the one before
    finally:
        await bus.aclose()
    # A URL: no prefix, a connection of its own.
    plain = f"sserelay-test-{uuid.uuid4().hex[:8]}"
    try:
        assert isinstance(await sserelay.apublish(redis_url, plain, "x"), str)
    finally:
        with redis.Redis.from_url(redis_url) as client:
            client.delete(stream_key("", plain))


async def test_retention_trims_at_publish(redis_url: str, prefix: str) -> None:
    channel = f"c{uuid.uuid4().hex[:8]}"
    async with RedisBus(redis_url, prefix=prefix, retention_count=5) as bus:
        for i in range(300):
            await bus.apublish(channel, f"m{i}")
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        length = await client.xlen(stream_key(prefix, channel))
    assert 5 <= length < 300  # MAXLEN ~: whole macro nodes go, so a few more may stay


def test_cli_publish_and_prune_on_redis(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSERELAY_REDIS_PREFIX", prefix)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for i in range(3):
        assert cli.main(["publish", "--redis", redis_url, "news", f"n{i}"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 3 and sorted(ids, key=position) == ids
    assert cli.main(["publish", "--redis", redis_url, "news", "raw", "--no-durable"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["migrate", "--redis", redis_url]) == 0
    assert "no migration" in capsys.readouterr().out
    assert cli.main(["prune", "--redis", redis_url, "--max-count", "1"]) == 0
    assert capsys.readouterr().out.strip() == "sserelay: pruned 2 events"


@pytest.mark.e2e
async def test_post_publish_goes_through_redis(redis_url: str, prefix: str) -> None:
    secret = "s" * 40
    async with running_relay(
        None, redis_url=redis_url, redis_prefix=prefix, jwt_secret=secret, public_channels=("news",)
    ) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/news")
        try:
            await client.wait_ready()
            token = mint_token(secret, publish=["news"])
            body = json.dumps({"channel": "news", "data": {"x": 1}, "event": "n"}).encode()
            request = (
                b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            resp = await raw_request(HOST, relay.port, request)
            assert resp.status == 200, resp.body
            published = resp.json()["id"]
            with showing_frames(client):
                event = await client.next_event()
            assert (event.id, event.event, event.data) == (published, "n", '{"x":1}')
        finally:
            await client.close()
