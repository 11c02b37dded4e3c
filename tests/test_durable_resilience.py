"""Durable channels when things go wrong, end to end through real sockets.

The guarantees of ``docs/durable.md``: every connected client gets every event of a durable
channel exactly once and in order while the listener's connection, the log reader's
connections or the relay process itself are killed under load; large events, retention,
``max_replay``, malformed ``Last-Event-ID`` and a raw channel beside a durable one on the same
stream behave as documented; a reconnect wave costs a few shared reads, not one per client.

Nothing here sleeps to synchronise: tests wait for ``: ready``, for counts, or poll state with
a deadline (``wait_until``), so a slow machine makes them slower, never wrong. Every test works
in a database of its own (``durable_dsn``), so other runs on the same server cannot interfere,
and PostgreSQL itself is never restarted (the server is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sserelay.durable import apublish_durable
from sserelay.postgres import APPLICATION_NAME as LISTENER_APP
from sserelay.testing import (
    SseClient,
    SseMessage,
    StreamClosed,
    raw_request,
    running_relay,
    showing_frames,
    wait_until,
)

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
READER_APP = "sserelay-reader"
FAST_RECONNECT = {"reconnect_min": 0.05, "reconnect_max": 0.2}


def name() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


async def terminate(admin_dsn: str, database: str, application_name: str) -> int:
    """``pg_terminate_backend`` every connection of ``application_name`` to ``database``."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = %s",
            (application_name, database),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def allow_connections(admin_dsn: str, database: str, allow: bool) -> None:
    """Let new connections into ``database``, or not (existing ones are not touched)."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.Literal(allow)
            )
        )


class Feed:
    """One browser tab: a stream read in the background, its events kept, its last id tracked.

    ``connect`` may be called again after the stream ended (the relay died): the events of
    every connection go to the same list, as they would to the same page.
    """

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self.events: list[SseMessage] = []
        #: The browser's ``lastEventId``: the latest ``id:`` field of an event.
        self.last_id: str | None = None
        self.clients: list[SseClient] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        if len(self.channels) == 1:
            return f"/events/{self.channels[0]}"
        return "/events?" + "&".join(f"channel={c}" for c in self.channels)

    async def connect(
        self, port: int, *, query: str = "", headers: dict[str, str] | None = None
    ) -> None:
        sep = "&" if "?" in self.path else "?"
        path = self.path + (sep + query if query else "")
        client = await SseClient.open(HOST, port, path, headers)
        self.clients.append(client)
        assert client.status == 200, (path, client.status)
        with showing_frames(client):
            await client.wait_ready(timeout=30)
        self.task = asyncio.create_task(self._read(client))

    async def _read(self, client: SseClient) -> None:
        with contextlib.suppress(StreamClosed):
            while True:
                message = await client.next_event(timeout=3600)  # the tests' deadlines rule
                self.events.append(message)
                if message.id is not None:
                    self.last_id = message.id

    async def ended(self, timeout: float = 30) -> None:
        """Wait until the current connection is over (the relay went away)."""
        assert self.task is not None
        async with asyncio.timeout(timeout):
            await self.task

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StreamClosed):
                await self.task
        for client in self.clients:
            await client.close()

    def frames(self) -> str:
        return "\n".join(f"  {m.event} id={m.id} data={m.data[:80]!r}" for m in self.events[-40:])


def check_feed(feed: Feed, published: dict[str, dict[int, str]]) -> None:
    """``feed`` got every event of its channels once, in per-channel order, with the right ids.

    The event's channel is the first word of its data. A stream's id is its positions in its
    sorted channels' order (``a.b``), so after an event of channel ``c`` exactly the ``c``
    part goes up by one. The data carries the publisher and its counter, which must rise.
    """
    order = sorted(feed.channels)
    vector = dict.fromkeys(order, 0)
    counters: dict[tuple[str, str], int] = {}
    for index, event in enumerate(feed.events):
        channel, publisher, counter = event.data.split()
        where = f"event #{index} of {feed.path}: {event!r}\nlast frames:\n{feed.frames()}"
        assert channel in vector, where
        vector[channel] += 1
        assert event.data == published[channel].get(vector[channel]), where
        assert event.id == ".".join(str(vector[c]) for c in order), where
        last = counters.get((channel, publisher), -1)
        assert int(counter) > last, where
        counters[channel, publisher] = int(counter)
    for channel in order:
        assert vector[channel] == len(published[channel]), (
            f"{feed.path}: {vector[channel]} of {len(published[channel])} events on {channel}"
        )


def expected_count(feed: Feed, published: dict[str, dict[int, str]]) -> int:
    return sum(len(published[c]) for c in feed.channels)


class Publishers:
    """Publisher tasks, each on a connection of its own, publishing round robin on channels
    until stopped; ``published[channel][id] = data`` is what the log holds."""

    def __init__(self, dsn: str, channels: Sequence[str], count: int) -> None:
        self.dsn = dsn
        self.channels = list(channels)
        self.published: dict[str, dict[int, str]] = {c: {} for c in self.channels}
        self.total = 0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(p)) for p in range(count)]

    async def _run(self, publisher: int) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            counter = 0
            while not self._stop.is_set():
                channel = self.channels[(publisher + counter) % len(self.channels)]
                data = f"{channel} p{publisher} {counter}"
                seq = await apublish_durable(conn, channel, data)
                assert seq not in self.published[channel]
                self.published[channel][seq] = data
                self.total += 1
                counter += 1

    async def publish_more(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` more events are published (the publishers are alive and busy)."""
        target = self.total + n
        await wait_until(lambda: self.total >= target, timeout=timeout, message="publishers stuck")

    async def stop(self) -> None:
        self._stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def all_received(feeds: Sequence[Feed], published: dict[str, dict[int, str]]) -> None:
    """Wait until every feed has as many events as were published on its channels."""

    def progress() -> str:
        return "; ".join(f"{f.path}: {len(f.events)}/{expected_count(f, published)}" for f in feeds)

    await wait_until(
        lambda: all(len(f.events) >= expected_count(f, published) for f in feeds),
        timeout=60,
        interval=0.05,
        message=progress,
    )


async def finish(feeds: Sequence[Feed], dsn: str, published: dict[str, dict[int, str]]) -> None:
    """Wait for everything published, then one more event per channel: as it must come next,
    nothing (a late duplicate) can hide behind the count. Then check every feed."""
    await all_received(feeds, published)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for channel, events in published.items():
            data = f"{channel} last 0"
            events[await apublish_durable(conn, channel, data)] = data
    await all_received(feeds, published)
    for feed in feeds:
        check_feed(feed, published)


# -- 1, 2: the listener's and the readers' connections killed while publishing ---------------


async def readers_waiting_on_a_lock(admin_dsn: str, database: str) -> bool:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = %s AND wait_event_type = 'Lock'",
            (READER_APP, database),
        )
        row = await cursor.fetchone()
    return row is not None and row[0] > 0


def read_failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum("reading the log of" in m for m in caplog.messages)


@pytest.mark.timeout(90)
async def test_listener_and_readers_killed_repeatedly_while_publishing(
    dsn: str, durable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Five durable channels, three publishers, single- and multi-channel clients.

    Each round closes the database to new connections, terminates the listener's backend
    and lets the publishers commit events the relay is never notified of. The log is then
    locked and the database opened again: the relay reconnects and reads the log to fill the
    gap, and its reader backends are terminated while that read waits, so the read fails and
    is retried on a new connection. Every stream stays open and gets everything exactly once.
    """
    channels = sorted(name() for _ in range(5))
    database = dbname(durable_dsn)
    async with running_relay(durable_dsn, heartbeat=30.0, **FAST_RECONNECT) as relay:
        listener = relay.listener
        feeds = [Feed([c]) for c in channels]
        feeds += [
            Feed([channels[1], channels[0]]),
            Feed([channels[4], channels[2], channels[3]]),
            Feed(list(reversed(channels))),
        ]
        for feed in feeds:
            await feed.connect(relay.port)
        locker = await psycopg.AsyncConnection.connect(durable_dsn)
        publishers = Publishers(durable_dsn, channels, 3)
        try:
            await publishers.publish_more(30)
            for round_ in range(1, 5):
                await allow_connections(dsn, database, False)
                try:
                    assert await terminate(dsn, database, LISTENER_APP) == 1
                    await wait_until(lambda: not listener.connected, timeout=30)
                    # Committed while nobody listens: only the log has these.
                    await publishers.publish_more(15)
                    await locker.execute("LOCK TABLE sserelay.events IN ACCESS EXCLUSIVE MODE")
                finally:
                    await allow_connections(dsn, database, True)
                try:
                    await wait_until(
                        lambda: readers_waiting_on_a_lock(dsn, database),
                        timeout=30,
                        message="the relay did not read the log after reconnecting",
                    )
                    failures = read_failures(caplog)
                    assert await terminate(dsn, database, READER_APP) >= 1
                    await wait_until(lambda n=failures: read_failures(caplog) > n, timeout=30)  # type: ignore[misc]
                finally:
                    await locker.rollback()
                await wait_until(
                    lambda r=round_: (  # type: ignore[misc]
                        listener.reconnects == r
                        and listener.healthy
                        and all(relay.hub.is_live(c) for c in channels)
                        and not any(s.filling for s in relay.replay.states.values())
                    ),
                    timeout=30,
                    message=lambda: f"reconnects={listener.reconnects} {listener.last_error}",
                )
                await publishers.publish_more(30)
        finally:
            await publishers.stop()
            await locker.close()
        try:
            await finish(feeds, durable_dsn, publishers.published)
            assert listener.reconnects >= 1
            print(
                "TOTAL",
                publishers.total,
                relay.replay.filled,
                read_failures(caplog),
                listener.reconnects,
            )
            assert relay.replay.filled > 0  # the gaps were filled from the log
            assert relay.hub.stream_count == len(feeds)
            assert relay.hub.slow_dropped == 0
            assert all(f.task is not None and not f.task.done() for f in feeds)
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 200, health.body
        finally:
            for feed in feeds:
                await feed.close()
