"""A real Redis restart while durable events are being published.

The other outage tests end the relay's connections (``CLIENT KILL``) or cut a TCP proxy:
the server itself stays up with everything in memory. Here a private ``redis-server``
(a child process of the test, on a free loopback port, ``appendonly yes`` with
``appendfsync always``) is killed with SIGKILL, or shut down with ``SHUTDOWN``, while
publishers keep publishing, and started again on the same port and directory.

What must hold: nothing acknowledged is lost (every fsync'ed entry is back after the
restart), each stream holds exactly the publishers' sequence (a publish that failed is
only repeated if its entry is not in the stream), and every client, on one channel or on
several, gets every event of the stream once, in order, with the stream's ids, on the
stream it opened before the restart: the relay keeps streams open through a broker
outage and fills them from the streams once Redis is back (docs/redis.md).

The shared test Redis (``SSERELAY_TEST_REDIS``) is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio

from sserelay.bus.redis.publish import RedisBus
from sserelay.bus.redis.scripts import stream_key
from sserelay.errors import PublishError
from sserelay.relay import Relay
from sserelay.testing import SseClient, raw_request, running_relay, wait_until
from streams import Feed

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
HOST = "127.0.0.1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not os.access(REDIS_SERVER, os.X_OK),
        reason=f"{REDIS_SERVER} is not installed: no private Redis server to restart",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own: AOF with fsync on every write, no RDB."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.log = directory / "redis.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        args = ["--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        args += ["--logfile", str(self.log)]
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.starts += 1
        async with redis.asyncio.Redis.from_url(self.url) as client:

            async def up() -> bool:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"redis-server exited:\n{self.log_text()}")
                try:
                    return bool(await client.ping())
                except redis.RedisError:  # refused, or still loading the AOF
                    return False

            await wait_until(up, timeout=30, interval=0.05, message=self.log_text)

    async def kill(self) -> None:
        """SIGKILL: a crash (with ``appendfsync always``, what was acknowledged is on disk)."""
        assert self.proc is not None
        self.proc.kill()
        async with asyncio.timeout(30):
            await self.proc.wait()

    async def shutdown(self) -> None:
        """A graceful ``SHUTDOWN`` (redis-cli), the way an operator restarts it."""
        assert self.proc is not None
        cli = await asyncio.create_subprocess_exec(
            REDIS_CLI,
            *("-h", HOST, "-p", str(self.port), "SHUTDOWN"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            await cli.wait()
            status = await self.proc.wait()
        assert status == 0, self.log_text()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


class Publisher:
    """Publishes ``"<channel> <n>"`` for n = 0, 1, 2, ... on one channel, until stopped.

    A publish that raised may or may not have been stored (Redis may have run the script
    and died before answering): once Redis answers again, the stream's last entry says
    which, and the event is published again only if it is not there. So the stream must
    end up holding exactly n = 0 .. next-1, each once, in order.
    """

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.key = stream_key("", channel)
        #: (entry id, data) of every acknowledged publish, in order.
        self.acked: list[tuple[str, str]] = []
        #: Publishes that raised, and those of them that had been stored all the same.
        self.failures = 0
        self.recovered = 0
        self.next = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def data(self, n: int) -> str:
        return f"{self.channel} {n}"

    async def _run(self) -> None:
        async with (
            RedisBus(self.url) as bus,
            redis.asyncio.Redis.from_url(self.url, socket_timeout=5) as reader,
        ):
            uncertain = False
            while not self._stop.is_set():
                data = self.data(self.next)
                if uncertain:
                    stored = await self._stored(reader, data)
                    if stored is not None:
                        self.recovered += 1
                        self.acked.append((stored, data))
                        self.next += 1
                        uncertain = False
                        continue
                try:
                    entry = await bus.apublish(self.channel, data)
                except PublishError:
                    self.failures += 1
                    uncertain = True
                    await asyncio.sleep(0.02)  # Redis is down: do not spin
                    continue
                assert entry is not None
                self.acked.append((entry, data))
                self.next += 1
                uncertain = False

    async def _stored(self, reader: redis.asyncio.Redis, data: str) -> str | None:
        """The entry id of ``data`` if it is the stream's last entry, once Redis answers."""
        while True:
            try:
                last = await reader.xrevrange(self.key, count=1)
            except redis.RedisError:
                await asyncio.sleep(0.02)
                continue
            if last and last[0][1].get(b"d") == data.encode():
                return str(last[0][0].decode())
            return None

    async def stop(self) -> None:
        self._stop.set()
        async with asyncio.timeout(30):
            await self.task


async def acked(publishers: Sequence[Publisher], n: int) -> None:
    """Wait until every publisher has ``n`` more acknowledged events."""
    targets = [len(p.acked) + n for p in publishers]

    def done() -> bool:
        for p in publishers:
            if p.task.done():
                p.task.result()
                raise AssertionError(f"publisher of {p.channel} stopped")
        return all(len(p.acked) >= t for p, t in zip(publishers, targets, strict=True))

    await wait_until(
        done, timeout=60, message=lambda: str([(len(p.acked), p.failures) for p in publishers])
    )


async def open_feed(relay: Relay, path: str) -> Feed:
    client = await SseClient.open(HOST, relay.port, path)
    assert client.status == 200, (path, client.status)
    await client.wait_ready()
    return Feed(client)


def per_channel(feed: Feed, channels: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """A multi-channel stream's events per channel, each with its own part of the
    composite id (positions in sorted channel order)."""
    order = sorted(channels)
    got: dict[str, list[tuple[str, str]]] = {c: [] for c in channels}
    for event in feed.events:
        channel = event.data.split(" ", 1)[0]
        parts = (event.id or "").split(".")
        assert len(parts) == len(order), event
        got[channel].append((parts[order.index(channel)], event.data))
    return got


def first_difference(got: list[tuple[str, str]], want: list[tuple[str, str]]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"{len(got)} of {len(want)}; at {i}: got {g}, want {w}"
    return f"{len(got)} of {len(want)}"


@pytest.mark.parametrize("stop", ["sigkill", "shutdown"])
async def test_redis_restart_while_publishing_loses_and_repeats_nothing(
    redis_server: RedisServer, stop: str
) -> None:
    channels = sorted(f"r{uuid.uuid4().hex[:8]}" for _ in range(3))
    async with running_relay(
        None,
        redis_url=redis_server.url,
        reconnect_min=0.05,
        reconnect_max=0.5,
        probe_interval=1.0,
        heartbeat=30.0,
    ) as relay:
        feeds: list[Feed] = []
        publishers: list[Publisher] = []
        try:
            singles = [(c, await open_feed(relay, f"/events/{c}")) for c in channels for _ in "ab"]
            feeds += [f for _, f in singles]
            query = "&".join(f"channel={c}" for c in reversed(channels))
            multi = await open_feed(relay, f"/events?{query}")
            feeds.append(multi)

            publishers = [Publisher(redis_server.url, c) for c in channels]
            await acked(publishers, 30)
            # Mid-publishing: each publisher has a script in flight or about to be.
            before = [p.failures for p in publishers]
            if stop == "sigkill":
                await redis_server.kill()
            else:
                await redis_server.shutdown()
            await wait_until(lambda: not relay.listener.connected, timeout=30)
            await wait_until(
                lambda: all(p.failures > b for p, b in zip(publishers, before, strict=True)),
                timeout=30,
                message="publishers did not notice the outage",
            )
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 503, health.body

            await redis_server.start()
            await wait_until(lambda: relay.listener.healthy, timeout=30)
            await acked(publishers, 30)
            for p in publishers:
                await p.stop()

            # What the streams hold is the publishers' sequence, each event once.
            expected: dict[str, list[tuple[str, str]]] = {}
            async with redis.asyncio.Redis.from_url(redis_server.url) as client:
                for p in publishers:
                    entries = await client.xrange(p.key)
                    expected[p.channel] = [(i.decode(), f[b"d"].decode()) for i, f in entries]
                    assert [d for _, d in expected[p.channel]] == [
                        p.data(n) for n in range(p.next)
                    ], f"{p.channel}: the stream is not the publishers' sequence"
                    # Every acknowledged publish is there, under the id it was given.
                    assert p.acked == expected[p.channel]

            # Every client gets all of it, once, in order.
            def complete() -> bool:
                counts = [len(f.events) for f in feeds]
                return all(
                    c >= len(expected[ch]) for c, (ch, _) in zip(counts[:-1], singles, strict=True)
                ) and (counts[-1] >= sum(len(e) for e in expected.values()))

            await wait_until(
                complete,
                timeout=60,
                message=lambda: (
                    f"{[len(f.events) for f in feeds]} of {[len(e) for e in expected.values()]}"
                ),
            )
            # One more per channel: a late duplicate would arrive before it.
            async with RedisBus(redis_server.url) as bus:
                for channel in channels:
                    data = f"{channel} last"
                    entry = await bus.apublish(channel, data)
                    assert entry is not None
                    expected[channel].append((entry, data))

            def last_arrived() -> bool:
                done = [f.events and f.events[-1].data == f"{c} last" for c, f in singles]
                got = per_channel(multi, channels)
                return all(done) and all(got[c] and got[c][-1][1] == f"{c} last" for c in channels)

            await wait_until(last_arrived, timeout=30)

            for channel, feed in singles:
                got = [(e.id or "", e.data) for e in feed.events]
                assert got == expected[channel], first_difference(got, expected[channel])
            got_multi = per_channel(multi, channels)
            for channel in channels:
                assert got_multi[channel] == expected[channel], first_difference(
                    got_multi[channel], expected[channel]
                )
            # The streams opened before the restart are the ones that got it all.
            assert not any(f.task.done() for f in feeds)
            assert relay.hub.stream_count == len(feeds)
            assert relay.listener.reconnects >= 1
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 200, health.body
        finally:
            for p in publishers:
                p._stop.set()
                p.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await p.task
            for feed in feeds:
                await feed.close()
