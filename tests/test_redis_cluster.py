"""Redis Cluster as the bus: what is particular to it. The behaviour every bus shares runs on
the cluster too (the ``cluster`` case of ``bus`` / ``durable_bus``, see conftest).

Against the session's cluster (3 masters, 3 replicas, ``conftest.redis_cluster``): finding
the cluster from any node, one connection per master, names on their slot's master, a
stale slot map corrected by ``-MOVED``, a resharding and a manual failover (the node lets
go of the channel: ``sunsubscribe``) while publishing, the publish API, CLI and ``POST
/publish``, heads and pruning across masters. Against a cluster of its own: a master
killed (SIGKILL) while three publishers write on five channels spread over every master.

Every test has a key prefix of its own and deletes its keys; tests that move slots or
roles leave the cluster healthy (3 masters, each with its replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import sserelay
from cluster import MISSING, LocalCluster, Node
from sserelay import cli
from sserelay.access.tokens import mint_token
from sserelay.bus.redis.cluster.layout import CLUSTER, SINGLE, hash_tag, layout_from_info
from sserelay.bus.redis.publish import RedisBus
from sserelay.bus.redis.scripts import durable_channel, stream_key
from sserelay.errors import ConfigError, PublishError
from sserelay.relay import Relay
from sserelay.testing import SseClient, raw_request, running_relay, showing_frames, wait_until
from sserelay.wire.ids import entry_position as position
from streams import Feed

HOST = "127.0.0.1"
FAST = {"reconnect_min": 0.05, "reconnect_max": 0.5, "heartbeat": 30.0}


def slot(name: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(name.encode()))


# -- names (pure logic) --------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["lobby", "a}b", "}x", "a{b", "{x}", "é😀", "a b"])
def test_a_channels_stream_and_durable_name_share_a_slot(channel: str) -> None:
    for prefix in ("", "app1:"):
        key = CLUSTER.stream_key(prefix, channel)
        assert slot(key) == slot(CLUSTER.durable_channel(prefix, channel)), key
        assert key.startswith(prefix + "sserelay:log:{")
    if "}" not in channel and "{" not in channel:
        # Without a prefix the plain name hashes with them: one SSUBSCRIBE for both.
        assert slot(CLUSTER.raw_channel("", channel)) == slot(CLUSTER.stream_key("", channel))
        assert CLUSTER.stream_key("", channel) == "sserelay:log:{" + channel + "}"


def test_cluster_names_never_collide() -> None:
    channels = ["a}b", "}x", "x", hash_tag("a}b")[0], "a{b", "a", "b"]
    keys = [CLUSTER.stream_key("", c) for c in channels]
    names = [CLUSTER.durable_channel("", c) for c in channels]
    assert len(set(keys)) == len(keys) and len(set(names)) == len(names)


def test_one_redis_keeps_its_names() -> None:
    for channel in ["lobby", "a}b"]:
        assert SINGLE.stream_key("p:", channel) == stream_key("p:", channel)
        assert SINGLE.durable_channel("p:", channel) == durable_channel("p:", channel)


def test_a_prefix_with_braces_is_refused_on_a_cluster_only() -> None:
    SINGLE.check_prefix("app{1}:")
    for prefix in ("app{1}:", "a{", "}"):
        with pytest.raises(ConfigError, match="hash tag"):
            CLUSTER.check_prefix(prefix)


def test_info_cluster_says_which() -> None:
    assert layout_from_info(b"# Cluster\r\ncluster_enabled:1\r\n") is CLUSTER
    assert layout_from_info("# Cluster\r\ncluster_enabled:0\r\n") is SINGLE
    assert layout_from_info({"cluster_enabled": 1}) is CLUSTER
    assert layout_from_info({}) is SINGLE


# -- against the session's cluster -----------------------------------------------------------


@pytest.fixture
def local(redis_cluster: LocalCluster) -> LocalCluster:
    return redis_cluster


@pytest.fixture
def prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    value = f"sserelay-test-{uuid.uuid4().hex[:10]}:"
    yield value
    with redis.RedisCluster.from_url(redis_cluster.url) as client:
        for key in client.scan_iter(match=value + "*", count=500):
            client.delete(key)


def spread(local: LocalCluster, prefix: str, per_master: int) -> list[str]:
    """Channel names, ``per_master`` on each master (by their stream's slot)."""
    found: dict[int, list[str]] = {m.port: [] for m in local.masters()}
    while any(len(v) < per_master for v in found.values()):
        channel = f"c{uuid.uuid4().hex[:8]}"
        owner = local.master_of(CLUSTER.stream_key(prefix, channel)).port
        if len(found[owner]) < per_master:
            found[owner].append(channel)
    return sorted(c for v in found.values() for c in v)


async def open_ready(relay: Relay, path: str) -> SseClient:
    client = await SseClient.open(HOST, relay.port, path)
    assert client.status == 200, (path, client.status)
    with showing_frames(client):
        await client.wait_ready(timeout=30)
    return client


async def shard_subscribers(node: Node, name: str) -> int:
    async with redis.asyncio.Redis(host=HOST, port=node.port) as client:
        reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", name)
    return int(reply[1])


@pytest.mark.e2e
async def test_found_from_a_replica_one_connection_per_master(
    local: LocalCluster, prefix: str
) -> None:
    """The URL names a replica: the relay finds the masters, holds one connection to each,
    and subscribes each channel's names on the master of their slot (and only there)."""
    replica = next(n for n in local.alive() if n not in local.masters())
    channels = spread(local, prefix, 2)
    url = replica.url
    async with running_relay(None, redis_url=url, redis_prefix=prefix, **FAST) as relay:
        clients = [await open_ready(relay, f"/events/{c}") for c in channels for _ in range(20)]
        everything = "&".join(f"channel={c}" for c in channels)
        clients.append(await open_ready(relay, f"/events?{everything}"))
        try:
            masters = {m.address: m for m in local.masters()}
            shards = relay.listener.shard_ids()  # type: ignore[attr-defined]
            assert sorted(shards) == sorted(masters), shards
            status = relay.health(detail=True)[1]["bus"]
            assert (status["broker"], status["cluster"]["masters"]) == ("redis", 3), status
            for channel in channels:
                for name in (prefix + channel, CLUSTER.durable_channel(prefix, channel)):
                    owner = local.master_of(name)  # the plain name hashes on its own
                    for node in masters.values():
                        want = 1 if node is owner else 0
                        assert await shard_subscribers(node, name) == want, (name, node.port)
            async with RedisBus(local.url, prefix=prefix) as bus:
                ids = {c: await bus.apublish(c, f"durable {c}") for c in channels}
                for channel in channels:
                    await bus.apublish(channel, f"raw {channel}", durable=False)
            with showing_frames(*clients):
                for i, channel in enumerate(channels):
                    for client in clients[i * 20 : (i + 1) * 20]:
                        first, second = await client.next_event(), await client.next_event()
                        assert (first.id, first.data) == (ids[channel], f"durable {channel}")
                        assert (second.id, second.data) == (None, f"raw {channel}")
                got = [(await clients[-1].next_event()).data for _ in range(2 * len(channels))]
            assert sorted(got) == sorted(
                [f"durable {c}" for c in channels] + [f"raw {c}" for c in channels]
            )
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        await wait_until(lambda: relay.hub.channel_count == 0)
        owner = local.master_of(prefix + channels[0])

        async def unsubscribed() -> bool:
            return await shard_subscribers(owner, prefix + channels[0]) == 0

        await wait_until(unsubscribed, timeout=10, message="still subscribed")


@pytest.mark.e2e
async def test_a_stale_slot_map_is_corrected_by_moved(
    local: LocalCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's map names the wrong master for a channel: its SSUBSCRIBE gets -MOVED,
    and the relay subscribes on the right one (and says so in the log)."""
    caplog.set_level(logging.INFO, "sserelay.redis")
    channel = spread(local, prefix, 1)[0]
    owner = local.master_of(CLUSTER.stream_key(prefix, channel))
    wrong = next(m for m in local.masters() if m is not owner)
    async with running_relay(None, redis_url=local.url, redis_prefix=prefix, **FAST) as relay:
        slots = relay.listener._slots  # type: ignore[attr-defined]
        assert slots is not None
        for name in (prefix + channel, CLUSTER.durable_channel(prefix, channel)):
            slots.owners[slot(name)] = (HOST, wrong.port)
        client = await open_ready(relay, f"/events/{channel}")
        try:
            assert "MovedError" in caplog.text, caplog.text
            assert await shard_subscribers(owner, CLUSTER.durable_channel(prefix, channel)) == 1
            async with RedisBus(local.url, prefix=prefix) as bus:
                published = await bus.apublish(channel, "after")
            with showing_frames(client):
                event = await client.next_event()
            assert (event.id, event.data) == (published, "after")
        finally:
            await client.close()


class Publisher:
    """Publishes durably on channels, round robin, until stopped; a publish that fails (the
    cluster is changing) is counted and the next one is tried after a short pause."""

    def __init__(self, url: str, prefix: str, channels: Sequence[str], index: int) -> None:
        self.bus = RedisBus(url, prefix=prefix)
        self.channels = list(channels)
        self.index = index
        #: (channel, id, data) of every publish that returned.
        self.acknowledged: list[tuple[str, str, str]] = []
        self.failed = 0
        self.stopped = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        counter = 0
        try:
            while not self.stopped.is_set():
                channel = self.channels[counter % len(self.channels)]
                data = f"{channel} p{self.index} {counter}"
                counter += 1
                try:
                    self.acknowledged.append(
                        (channel, str(await self.bus.apublish(channel, data)), data)
                    )
                except PublishError:
                    self.failed += 1
                    await asyncio.sleep(0.05)  # a pause before the next try, not a wait on state
        finally:
            await self.bus.aclose()

    async def stop(self) -> None:
        self.stopped.set()
        async with asyncio.timeout(30):
            await self.task


@contextlib.asynccontextmanager
async def publishing(
    url: str, prefix: str, channels: Sequence[str], count: int
) -> AsyncIterator[list[Publisher]]:
    publishers = [Publisher(url, prefix, channels, i) for i in range(count)]
    try:
        yield publishers
    finally:
        for publisher in publishers:
            await publisher.stop()


async def more(publishers: list[Publisher], n: int) -> None:
    """Return once the publishers had ``n`` more publishes acknowledged."""
    target = sum(len(p.acknowledged) for p in publishers) + n

    def done() -> bool:
        for p in publishers:
            if p.task.done():
                p.task.result()
                raise AssertionError("a publisher stopped")
        return sum(len(p.acknowledged) for p in publishers) >= target

    await wait_until(done, timeout=60, message="publishers stuck")


async def stream_entries(url: str, prefix: str, channel: str) -> list[tuple[str, str]]:
    """The ground truth: (id, data) of every entry of the channel's stream."""
    async with redis.asyncio.RedisCluster.from_url(url) as client:
        entries = await client.xrange(CLUSTER.stream_key(prefix, channel))
    return [(i.decode(), f[b"d"].decode()) for i, f in entries]


def check_feeds(
    feeds: dict[str, list[Feed]], mixed: Feed, channels: Sequence[str], truth: dict[str, Any]
) -> None:
    """Each single-channel stream got its stream's entries, once, in order; the stream on
    every channel got each channel's, in order (its ids: positions in sorted order)."""
    for channel, group in feeds.items():
        for feed in group:
            got = [(e.id, e.data) for e in feed.events]
            assert got == truth[channel], f"{channel}: {len(got)} of {len(truth[channel])}"
    order = sorted(channels)
    for channel in channels:
        index = order.index(channel)
        got = [
            (e.id.split(".")[index], e.data)
            for e in mixed.events
            if e.id is not None and e.data.startswith(channel + " ")
        ]
        assert got == truth[channel], f"{channel} on the mixed stream"


async def watch(
    relay: Relay, channels: Sequence[str], per_channel: int
) -> tuple[dict[str, list[Feed]], Feed]:
    feeds = {
        c: [Feed(await open_ready(relay, f"/events/{c}")) for _ in range(per_channel)]
        for c in channels
    }
    mixed = Feed(await open_ready(relay, "/events?" + "&".join(f"channel={c}" for c in channels)))
    return feeds, mixed


async def settle(
    local: LocalCluster,
    prefix: str,
    channels: Sequence[str],
    feeds: dict[str, list[Feed]],
    mixed: Feed,
) -> dict[str, Any]:
    """One more event per channel (a late duplicate cannot hide behind a count), then wait
    until every stream has every entry; the ground truth."""
    url = local.alive()[0].url  # the URL's node may be the one killed
    async with RedisBus(url, prefix=prefix) as bus:
        for channel in channels:
            await bus.apublish(channel, f"{channel} last")
    truth = {c: await stream_entries(url, prefix, c) for c in channels}

    def arrived() -> bool:
        singles = all(len(f.events) >= len(truth[c]) for c, g in feeds.items() for f in g)
        return singles and len(mixed.events) >= sum(len(t) for t in truth.values())

    await wait_until(
        arrived,
        timeout=60,
        message=lambda: str({c: [len(f.events) for f in g] for c, g in feeds.items()}),
    )
    return truth


def move_slot(local: LocalCluster, number: int, source: Node, target: Node) -> None:
    """Reshard one slot, keys and all, as ``redis-cli --cluster reshard`` does."""
    with source.client() as src, target.client() as dst:
        src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
        dst.execute_command("CLUSTER", "SETSLOT", number, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", number, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", number, 100):
            src.execute_command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
    for node in [target, source, *(m for m in local.masters() if m not in (source, target))]:
        with node.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", number, "NODE", dst_id)


@pytest.mark.e2e
async def test_resharding_moves_a_channel_and_fills_the_gap(
    local: LocalCluster, prefix: str
) -> None:
    """A channel's slot moves to another master while publishers write on it: the old
    master lets go of its names (``sunsubscribe``), the relay subscribes them on the new
    one and fills what it missed from the stream. Every stream gets every entry once, in
    order; the other channels are not disturbed."""
    channels = spread(local, prefix, 1)
    moving = channels[0]
    number = slot(CLUSTER.stream_key(prefix, moving))
    source = local.master_of(CLUSTER.stream_key(prefix, moving))
    target = next(m for m in local.masters() if m is not source)
    async with running_relay(None, redis_url=local.url, redis_prefix=prefix, **FAST) as relay:
        feeds, mixed = await watch(relay, channels, 2)
        try:
            async with publishing(local.url, prefix, channels, 3) as publishers:
                await more(publishers, 30)
                await asyncio.to_thread(move_slot, local, number, source, target)
                await wait_until(
                    lambda: (
                        relay.listener.shard_ids().get(target.address) is not None  # type: ignore[attr-defined]
                        and relay.listener.healthy
                    ),
                    timeout=30,
                )
                await more(publishers, 30)
            durable = CLUSTER.durable_channel(prefix, moving)  # the name in the moved slot
            assert await shard_subscribers(target, durable) == 1
            assert await shard_subscribers(source, durable) == 0
            truth = await settle(local, prefix, channels, feeds, mixed)
            check_feeds(feeds, mixed, channels, truth)
        finally:
            for feed in [*(f for g in feeds.values() for f in g), mixed]:
                await feed.close()
            await asyncio.to_thread(move_slot, local, number, target, source)


@pytest.mark.e2e
async def test_manual_failover_resubscribes_on_the_new_master(
    local: LocalCluster, prefix: str
) -> None:
    """``CLUSTER FAILOVER`` on a replica: its master becomes a replica and lets go of its
    channels; the relay follows to the new master and fills the gap."""
    channels = spread(local, prefix, 1)
    old = local.master_of(CLUSTER.stream_key(prefix, channels[0]))
    async with running_relay(None, redis_url=local.url, redis_prefix=prefix, **FAST) as relay:
        feeds, mixed = await watch(relay, channels, 2)
        try:
            async with publishing(local.url, prefix, channels, 3) as publishers:
                await more(publishers, 30)
                with old.client() as client:
                    replica_port = int(client.info("replication")["slave0"]["port"])
                replica = next(n for n in local.nodes if n.port == replica_port)
                with replica.client() as client:
                    client.execute_command("CLUSTER", "FAILOVER")
                await wait_until(
                    lambda: (
                        replica.address in relay.listener.shard_ids()  # type: ignore[attr-defined]
                        and relay.listener.healthy
                    ),
                    timeout=30,
                )
                await more(publishers, 30)
            truth = await settle(local, prefix, channels, feeds, mixed)
            check_feeds(feeds, mixed, channels, truth)
        finally:
            for feed in [*(f for g in feeds.values() for f in g), mixed]:
                await feed.close()
            await asyncio.to_thread(local.wait_healthy)


# -- publishing and the log --------------------------------------------------------------------


async def test_publish_api_finds_the_cluster_from_any_node(
    local: LocalCluster, prefix: str
) -> None:
    channel = spread(local, prefix, 1)[0]
    replica = next(n for n in local.alive() if n not in local.masters())
    async with RedisBus(replica.url, prefix=prefix) as bus:
        first = await bus.apublish(channel, {"n": 1}, event="e")
        second = await asyncio.to_thread(sserelay.publish, bus, channel, "two")
        assert await bus.apublish(channel, "raw", durable=False) is None
    assert first is not None and second is not None and position(second) > position(first)
    third = await asyncio.to_thread(sserelay.publish, local.url, channel, "by URL")
    async with redis.asyncio.RedisCluster.from_url(local.url) as client:
        entries = await client.xrange(CLUSTER.stream_key(prefix, channel))
        other = await client.xrange(CLUSTER.stream_key("", channel))
        await client.delete(CLUSTER.stream_key("", channel))
    assert [(e[0].decode(), e[1][b"d"], e[1].get(b"e")) for e in entries] == [
        (first, b'{"n":1}', b"e"),
        (second, b"two", None),
    ]
    assert [e[0].decode() for e in other] == [third]
    async with RedisBus(local.url, prefix="app{1}:") as braced:
        with pytest.raises(ConfigError, match="hash tag"):
            await braced.apublish(channel, "x")


async def test_heads_reads_and_prune_across_masters(local: LocalCluster, prefix: str) -> None:
    from sserelay.bus.redis.cluster.log import ClusterLog

    channels = spread(local, prefix, 4)
    last: dict[str, str] = {}
    async with RedisBus(local.url, prefix=prefix) as bus:
        for channel in channels:
            for i in range(3):
                last[channel] = str(await bus.apublish(channel, f"{channel} m{i}"))
    log = ClusterLog(local.url, prefix=prefix)
    try:
        assert await log.installed()
        heads = await log.heads([*channels, "never-published"])
        assert heads == {**{c: position(last[c]) for c in channels}, "never-published": 0}
        rows = await log.read_after(channels[0], 0)
        assert [r.data for r in rows] == [f"{channels[0]} m{i}" for i in range(3)]
        assert await log.back(channels[0], position(last[channels[0]]), 1, 0) == rows[1].id
        assert await log.prune(None, 1) == 2 * len(channels)
        async with redis.asyncio.RedisCluster.from_url(local.url) as client:
            lengths = [await client.xlen(CLUSTER.stream_key(prefix, c)) for c in channels]
        assert lengths == [1] * len(channels)
    finally:
        await log.close()


def test_cli_publish_and_prune_on_a_cluster(
    local: LocalCluster,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SSERELAY_REDIS_PREFIX", prefix)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    channels = spread(local, prefix, 1)
    for channel in channels:
        for i in range(2):
            assert cli.main(["publish", "--redis", local.url, channel, f"n{i}"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 2 * len(channels)
    assert cli.main(["publish", "--redis", local.url, channels[0], "raw", "--no-durable"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["prune", "--redis", local.url, "--max-count", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"sserelay: pruned {len(channels)} events"


@pytest.mark.e2e
async def test_post_publish_goes_through_the_cluster(local: LocalCluster, prefix: str) -> None:
    secret = "s" * 40
    channel = spread(local, prefix, 1)[-1]
    async with running_relay(
        None,
        redis_url=local.url,
        redis_prefix=prefix,
        jwt_secret=secret,
        public_channels=(channel,),
        heartbeat=30.0,
    ) as relay:
        client = await open_ready(relay, f"/events/{channel}")
        try:
            token = mint_token(secret, publish=[channel])
            answers = []
            for body in (
                {"channel": channel, "data": {"x": 1}, "event": "n"},
                # An id of its own on a bus with a log: refused (the log numbers events).
                {"channel": channel, "data": "plain", "id": "7"},
            ):
                raw = json.dumps(body).encode()
                request = (
                    b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {token}\r\n".encode()
                    + f"Content-Length: {len(raw)}\r\n\r\n".encode()
                    + raw
                )
                answers.append(await raw_request(HOST, relay.port, request))
            assert answers[0].status == 200, answers[0].body
            assert answers[1].status == 400 and "id of your own" in answers[1].json()["error"]
            with showing_frames(client):
                durable = await client.next_event()
            assert (durable.id, durable.event, durable.data) == (
                answers[0].json()["id"],
                "n",
                '{"x":1}',
            )
        finally:
            await client.close()


# -- a master killed (a cluster of the test's own) ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
async def test_a_master_killed_while_publishing(tmp_path: Path) -> None:
    """SIGKILL of a master (the one the relay's URL names) while three publishers write
    durable events on five channels spread over every master: its replica takes over, the
    relay resubscribes there (and reads the map from another node), and every client gets
    exactly the entries of its channel's stream, once, in order, with the stream's ids.
    Every publish that was acknowledged is in the stream."""
    local = await asyncio.to_thread(lambda: LocalCluster(tmp_path).start())
    try:
        prefix = "failover:"
        channels = spread(local, prefix, 2)[:5]
        victim = local.nodes[0]
        assert victim in local.masters()
        async with running_relay(None, redis_url=local.url, redis_prefix=prefix, **FAST) as relay:
            feeds, mixed = await watch(relay, channels, 2)
            try:
                async with publishing(local.url, prefix, channels, 3) as publishers:
                    await more(publishers, 60)
                    before = relay.listener.reconnects
                    await asyncio.to_thread(local.kill, victim)

                    def promoted() -> bool:
                        return len(local.masters()) == 3

                    await wait_until(promoted, timeout=60, message="a replica promoted")
                    await wait_until(
                        lambda: relay.listener.healthy and relay.listener.reconnects > before,
                        timeout=60,
                        message=lambda: str(relay.listener.status()),
                    )
                    await more(publishers, 60)
                truth = await settle(local, prefix, channels, feeds, mixed)
                check_feeds(feeds, mixed, channels, truth)
                stored = {(c, i, d) for c in channels for i, d in truth[c]}
                for publisher in publishers:
                    assert set(publisher.acknowledged) <= stored
                health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
                assert health.status == 200, health.body
                shards = relay.listener.shard_ids()  # type: ignore[attr-defined]
                assert victim.address not in shards and len(shards) == 3, shards
            finally:
                for feed in [*(f for g in feeds.values() for f in g), mixed]:
                    await feed.close()
    finally:
        await asyncio.to_thread(local.stop)


def documented(heading: str) -> str:
    """The first Python snippet under ``heading`` in docs/redis.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()
    section = text[text.index(heading) :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


def test_moving_streams_from_one_redis_as_documented(
    local: LocalCluster, prefix: str, redis_url: str
) -> None:
    """docs/redis.md's snippet, run as written: the streams of one Redis copied to their
    cluster names, ids and ``prev`` kept; the next publish on the cluster follows on."""
    namespace: dict[str, Any] = {}
    exec(documented("### Moving from one Redis to a cluster"), namespace)
    channels = ["lobby", "a}b"]
    try:
        with RedisBus(redis_url, prefix=prefix) as bus:
            for channel in channels:
                for i in range(3):
                    bus.publish(channel, f"{channel} {i}")
        with redis.Redis.from_url(redis_url) as single:
            before = {c: single.xrange(stream_key(prefix, c)) for c in channels}
        assert namespace["move_streams"](redis_url, local.url, prefix) == len(channels)
        with redis.RedisCluster.from_url(local.url) as client:
            after = {c: client.xrange(CLUSTER.stream_key(prefix, c)) for c in channels}
        assert after == before
        with RedisBus(local.url, prefix=prefix) as bus:
            following = bus.publish("lobby", "on the cluster")
        with redis.RedisCluster.from_url(local.url) as client:
            [(_, fields)] = client.xrange(CLUSTER.stream_key(prefix, "lobby"), following)
        assert fields[b"p"] == before["lobby"][-1][0]
    finally:
        with redis.Redis.from_url(redis_url) as single:
            for key in single.scan_iter(match=prefix + "*", count=500):
                single.delete(key)
