"""Durable channels on either broker: the guarantees of docs/durable.md, run against
PostgreSQL and against Redis with the same tests (``durable_bus``, see conftest).

Event ids differ by broker (``42`` on PostgreSQL, the stream entry id ``1718000000000-0``
on Redis), so the tests compare the ids a stream shows with the ids publishing returned,
never with numbers. Nothing sleeps to synchronise: tests wait for ``: ready``, for events,
or poll state with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from proxy import Proxy
from sserelay.relay import Relay
from sserelay.testing import (
    SseClient,
    SseMessage,
    raw_request,
    showing_frames,
    wait_until,
)
from streams import Feed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HOST = "127.0.0.1"
FAST_RECONNECT = {"reconnect_min": 0.05, "reconnect_max": 0.2}


def name() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


async def open_stream(relay: Relay, path: str, **headers: str) -> SseClient:
    client = await SseClient.open(HOST, relay.port, path, headers)
    assert client.status == 200, (path, client.status)
    return client


async def events(client: SseClient, n: int, timeout: float = 20) -> list[SseMessage]:
    with showing_frames(client):
        return [await client.next_event(timeout) for _ in range(n)]


# -- ids, Last-Event-ID, history --------------------------------------------------------


async def test_durable_events_carry_log_ids_and_replay_after_last_event_id(
    durable_bus: Any,
) -> None:
    channel = name()
    async with durable_bus.relay() as relay:
        client = await open_stream(relay, f"/events/{channel}")
        try:
            await client.wait_ready()
            ids = [await durable_bus.publish(channel, f"m{i}", "msg") for i in range(3)]
            got = await events(client, 3)
            assert [(e.id, e.event, e.data) for e in got] == [
                (ids[i], "msg", f"m{i}") for i in range(3)
            ]
        finally:
            await client.close()
        # Published while away: replayed in order, then live, with no gap or duplicate.
        ids += [await durable_bus.publish(channel, f"m{i}") for i in range(3, 6)]
        again = await open_stream(relay, f"/events/{channel}", **{"Last-Event-ID": ids[2]})
        try:
            await again.wait_ready()
            replayed = await events(again, 3)
            ids.append(await durable_bus.publish(channel, "m6"))
            live = await events(again, 1)
            got = [*replayed, *live]
            assert [e.data for e in got] == ["m3", "m4", "m5", "m6"], again.seen
            assert [e.id for e in got] == ids[3:]
        finally:
            await again.close()


async def test_multi_channel_stream_resumes_from_composite_id(durable_bus: Any) -> None:
    a, b = sorted([name(), name()])
    async with durable_bus.relay() as relay:
        path = f"/events?channel={b}&channel={a}"
        client = await open_stream(relay, path)
        try:
            await client.wait_ready()
            a1 = await durable_bus.publish(a, "a1")
            first = (await events(client, 1))[0]
            b1 = await durable_bus.publish(b, "b1")
            second = (await events(client, 1))[0]
            none = "0" if durable_bus.kind == "postgres" else "0-0"
            # A stream's id is its position in each channel, in sorted channel order.
            assert (first.data, first.id) == ("a1", f"{a1}.{none}"), client.seen
            assert (second.data, second.id) == ("b1", f"{a1}.{b1}"), client.seen
        finally:
            await client.close()
        a2 = await durable_bus.publish(a, "a2")
        b2 = await durable_bus.publish(b, "b2")
        again = await open_stream(relay, path, **{"Last-Event-ID": first.id or ""})
        try:
            got = await events(again, 3)
            assert [(e.data, e.id) for e in got] == [
                ("a2", f"{a2}.{none}"),
                ("b1", f"{a2}.{b1}"),
                ("b2", f"{a2}.{b2}"),
            ], again.seen
        finally:
            await again.close()


async def test_history_starts_with_the_last_n_events(durable_bus: Any) -> None:
    channel = name()
    ids = [await durable_bus.publish(channel, f"m{i}") for i in range(5)]
    async with durable_bus.relay() as relay:
        client = await open_stream(relay, f"/events/{channel}?history=2")
        try:
            got = await events(client, 2)
            assert [(e.id, e.data) for e in got] == [(ids[3], "m3"), (ids[4], "m4")]
        finally:
            await client.close()


BAD_IDS = [
    "abc",
    "-1",
    "1.2",
    "99999999999999999999999",
    "٣",
    "1-2-3",
    "-5",
    "18446744073709551616-0",
]


async def test_malformed_last_event_id_starts_from_now(durable_bus: Any) -> None:
    channel = name()
    await durable_bus.publish(channel, "old")
    async with durable_bus.relay() as relay:
        for bad in BAD_IDS:
            client = await open_stream(relay, f"/events/{channel}", **{"Last-Event-ID": bad})
            try:
                await client.wait_ready()
                await durable_bus.publish(channel, f"new {bad}")
                event = (await events(client, 1))[0]
                assert event.data == f"new {bad}", client.seen
            finally:
                await client.close()


# -- retention and max_replay --------------------------------------------------------


def missed(message: SseMessage) -> dict[str, Any]:
    assert message.event == "missed", message
    body: dict[str, Any] = json.loads(message.data)
    return body


async def test_trimmed_events_give_missed_then_what_is_left(durable_bus: Any) -> None:
    channel = name()
    ids = [await durable_bus.publish(channel, f"m{i}") for i in range(6)]
    await durable_bus.trim(channel, keep=2)  # m4, m5 are left
    async with durable_bus.relay() as relay:
        client = await open_stream(relay, f"/events/{channel}", **{"Last-Event-ID": ids[1]})
        try:
            first, *rest = await events(client, 3)
            body = missed(first)
            spelled = [int(i) if i.isdigit() else i for i in ids]
            assert body == {
                "channel": channel,
                "after": spelled[1],
                "resumed_at": spelled[3],
                "reason": "retention",
            }
            assert [(e.id, e.data) for e in rest] == [(ids[4], "m4"), (ids[5], "m5")]
        finally:
            await client.close()
        # A client that had seen everything that was deleted misses nothing.
        client = await open_stream(relay, f"/events/{channel}", **{"Last-Event-ID": ids[3]})
        try:
            got = await events(client, 2)
            assert [e.data for e in got] == ["m4", "m5"], client.seen
        finally:
            await client.close()


async def test_max_replay_bounds_a_catch_up(durable_bus: Any) -> None:
    channel = name()
    ids = [await durable_bus.publish(channel, f"m{i}") for i in range(8)]
    async with durable_bus.relay(max_replay=3) as relay:
        client = await open_stream(relay, f"/events/{channel}", **{"Last-Event-ID": ids[0]})
        try:
            first, *rest = await events(client, 4)
            body = missed(first)
            assert body["reason"] == "too many events"
            assert str(body["resumed_at"]) == ids[4]
            assert [e.data for e in rest] == ["m5", "m6", "m7"], client.seen
        finally:
            await client.close()


async def test_large_event_is_read_from_the_log(durable_bus: Any) -> None:
    """Over the notification limit, only the id is notified; the relay reads the body."""
    channel = name()
    big = ('line é😀 "quoted"\n' * 20_000)[:200_000]
    async with durable_bus.relay() as relay:
        client = await open_stream(relay, f"/events/{channel}")
        try:
            await client.wait_ready()
            first = await durable_bus.publish(channel, big, "big")
            await durable_bus.publish(channel, "small")
            got = await events(client, 2)
            assert (got[0].id, got[0].event) == (first, "big")
            assert got[0].data == big.replace("\r\n", "\n")
            assert got[1].data == "small"
        finally:
            await client.close()
        again = await open_stream(relay, f"/events/{channel}?history=2")
        try:
            got = await events(again, 2)
            assert [e.data for e in got] == [big, "small"]
        finally:
            await again.close()


# -- losing the broker while publishing ----------------------------------------------


class Publishers:
    """Tasks publishing durably, round robin over channels, until stopped."""

    def __init__(self, bus: Any, channels: Sequence[str], count: int) -> None:
        self.bus = bus
        self.channels = list(channels)
        #: channel -> [(id, data)] in publish order (which is log order: one publisher per
        #: channel, so each channel's events are published one after the other).
        self.published: dict[str, list[tuple[str, str]]] = {c: [] for c in channels}
        self.total = 0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(count)]

    async def _run(self, index: int) -> None:
        async with self.bus.publisher() as publish:
            counter = 0
            mine = self.channels[index :: len(self._tasks)]
            while not self._stop.is_set():
                channel = mine[counter % len(mine)]
                data = f"{channel} p{index} {counter}"
                self.published[channel].append((await publish(channel, data), data))
                self.total += 1
                counter += 1

    async def more(self, n: int) -> None:
        target = self.total + n

        def done() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()
                    raise AssertionError("a publisher stopped")
            return self.total >= target

        await wait_until(done, timeout=60, message="publishers stuck")

    async def stop(self) -> None:
        self._stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*self._tasks)


def check(feed: Feed, channel: str, published: list[tuple[str, str]]) -> None:
    got = [(e.id, e.data) for e in feed.events]
    assert got == published, (
        f"{channel}: {len(got)} of {len(published)}; first differences: "
        + str(
            [(i, g, p) for i, (g, p) in enumerate(zip(got, published, strict=False)) if g != p][:3]
        )
    )


async def test_listener_killed_repeatedly_while_publishing(durable_bus: Any) -> None:
    """The relay's bus connection is killed from the server side (pg_terminate_backend,
    Redis CLIENT KILL) again and again while three publishers keep going: every client
    gets every event once, in order, with the log's ids; the same streams stay open."""
    channels = sorted(name() for _ in range(3))
    async with durable_bus.relay(**FAST_RECONNECT) as relay:
        feeds: list[Feed] = []
        for channel in channels:
            for _ in range(2):
                client = await open_stream(relay, f"/events/{channel}")
                await client.wait_ready()
                feeds.append(Feed(client))
        publishers = Publishers(durable_bus, channels, 3)
        try:
            for round_ in range(4):
                await publishers.more(20)
                before = relay.listener.reconnects
                await durable_bus.kill_listener(relay)
                await wait_until(
                    lambda: relay.listener.reconnects > before and relay.listener.healthy,  # noqa: B023
                    timeout=30,
                    message=lambda: f"round {round_}: {relay.listener.last_error}",  # noqa: B023
                )
            await publishers.more(20)
            await publishers.stop()
            total = {c: len(publishers.published[c]) for c in channels}
            await wait_until(
                lambda: all(len(f.events) >= total[channels[i // 2]] for i, f in enumerate(feeds)),
                timeout=60,
                message=lambda: str([len(f.events) for f in feeds]),
            )
            # One more per channel: a late duplicate could not hide behind the count.
            for channel in channels:
                publishers.published[channel].append(
                    (await durable_bus.publish(channel, f"{channel} last"), f"{channel} last")
                )
            await wait_until(
                lambda: all(
                    len(f.events) >= len(publishers.published[channels[i // 2]])
                    for i, f in enumerate(feeds)
                ),
                timeout=60,
            )
            for i, feed in enumerate(feeds):
                check(feed, channels[i // 2], publishers.published[channels[i // 2]])
            assert relay.listener.reconnects == 4
            assert relay.hub.stream_count == len(feeds)
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 200, health.body
        finally:
            publishers._stop.set()
            for feed in feeds:
                await feed.close()


# -- an outage of the whole broker (a TCP proxy cut) -----------------------------------


def through(bus: Any, port: int) -> tuple[str | None, dict[str, Any]]:
    """(DSN, settings) of a relay on ``bus`` with its broker reached through ``port``."""
    from psycopg.conninfo import make_conninfo

    if bus.kind == "redis":
        return None, {**bus.settings(), "redis_url": f"redis://{HOST}:{port}/0"}
    return make_conninfo(bus.dsn, host=HOST, port=port), {}


def target_of(bus: Any) -> tuple[str, int]:
    from urllib.parse import urlsplit

    from psycopg.conninfo import conninfo_to_dict

    if bus.kind == "redis":
        parts = urlsplit(bus.url)
        return parts.hostname or HOST, parts.port or 6379
    params = conninfo_to_dict(bus.dsn)
    host = str(params.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip("the PostgreSQL under test is not on TCP")
    return host, int(params.get("port") or 5432)


async def test_broker_outage_streams_wait_and_catch_up(durable_bus: Any) -> None:
    """The broker becomes unreachable (every connection of the relay reset, new ones
    refused) while events keep being published to it directly; /healthz says 503 and the
    broker's last error; the streams stay open, and once it is back they get every event
    once, in order, and a stream opened during the outage too."""
    from sserelay.testing import running_relay

    if durable_bus.cluster:
        pytest.skip(
            "a proxy cannot stand between a relay and a Redis Cluster, whose nodes announce "
            "their own addresses; test_redis_cluster.py kills a master instead"
        )
    channel = name()
    async with Proxy(*target_of(durable_bus)) as proxy:
        dsn, settings = through(durable_bus, proxy.port)
        async with running_relay(dsn, **settings, **FAST_RECONNECT) as relay:
            await outage(durable_bus, proxy, relay, channel)


async def outage(durable_bus: Any, proxy: Proxy, relay: Relay, channel: str) -> None:
    """The body of the test above, given the relay behind the proxy."""
    listener = relay.listener
    client = await open_stream(relay, f"/events/{channel}")
    await client.wait_ready()
    feed = Feed(client)
    late: Feed | None = None
    published = [(await durable_bus.publish(channel, "before"), "before")]
    try:
        await wait_until(lambda: len(feed.events) == 1, message=lambda: str(feed.events))
        accepted = proxy.accepted
        proxy.cut()
        await wait_until(lambda: not listener.connected, timeout=30)
        await wait_until(lambda: proxy.accepted > accepted, timeout=30)  # a retry failed
        health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        body = health.json()
        assert health.status == 503, body
        assert body == {"status": "unavailable", "reason": "bus unreachable"}
        detail = relay.health(detail=True)[1]["bus"]
        assert detail["broker"] == durable_bus.kind and detail["last_error"], detail
        for i in range(5):
            published.append((await durable_bus.publish(channel, f"during {i}"), f"during {i}"))
        late_client = await open_stream(relay, f"/events/{channel}?history=10")
        proxy.up = True
        await wait_until(lambda: listener.healthy, timeout=30)
        late = Feed(late_client)
        published.append((await durable_bus.publish(channel, "after"), "after"))
        await wait_until(
            lambda: (
                len(feed.events) >= len(published)
                and late is not None
                and len(late.events) >= len(published)
            ),
            timeout=30,
            message=lambda: f"{len(feed.events)} / {len(late.events) if late else 0}",
        )
        assert [(e.id, e.data) for e in feed.events] == published
        assert [(e.id, e.data) for e in late.events] == published
        assert listener.reconnects == 1
    finally:
        await feed.close()
        if late is not None:
            await late.close()
