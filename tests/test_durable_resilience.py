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
import datetime
import json
import random
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from processes import relay_process
from proxy import open_upstream
from sserelay import apublish_durable
from sserelay.bus.postgres.listener import APPLICATION_NAME as LISTENER_APP
from sserelay.bus.postgres.log import prune
from sserelay.bus.postgres.statements import durable_channel as durable_name
from sserelay.testing import (
    SseClient,
    SseMessage,
    StreamClosed,
    notify,
    parse_block,
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

        def done() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()  # a publisher failed: say why, now
                    raise AssertionError("a publisher stopped")
            return self.total >= target

        await wait_until(done, timeout=timeout, message="publishers stuck")

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
                        interval=0.05,
                        message="the relay did not read the log after reconnecting",
                    )
                    failures = read_failures(caplog)
                    assert await terminate(dsn, database, READER_APP) >= 1
                    await wait_until(lambda n=failures: read_failures(caplog) > n, timeout=30)
                finally:
                    await locker.rollback()
                await wait_until(
                    lambda r=round_: (
                        listener.reconnects == r
                        and listener.healthy
                        and all(relay.delivery.is_live(c) for c in channels)
                        and not any(s.filling for s in relay.delivery.states.values())
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
            assert relay.delivery.filled > 0  # the gaps were filled from the log
            assert relay.hub.stream_count == len(feeds)
            assert relay.hub.slow_dropped == 0
            assert all(f.task is not None and not f.task.done() for f in feeds)
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 200, health.body
        finally:
            for feed in feeds:
                await feed.close()


# -- 3: the relay process killed and restarted while publishing ------------------------------


@pytest.mark.timeout(90)
async def test_relay_killed_and_restarted_clients_resume_with_last_event_id(
    durable_dsn: str, tmp_path: Path
) -> None:
    """SIGKILL the relay process while three publishers keep going, start a new one on the same
    port; the clients come back with their last id (two in the ``Last-Event-ID`` header, one in
    ``?lastEventId=``) and end up with every event exactly once, in order."""
    channels = sorted(name() for _ in range(3))
    log = tmp_path / "relay.log"
    feeds = [
        Feed([channels[0]]),
        Feed([channels[1]]),
        Feed([channels[2], channels[0], channels[1]]),
    ]
    publishers: Publishers | None = None
    try:
        async with relay_process("--dsn", durable_dsn, log=log) as first:
            port = first.port
            for feed in feeds:
                await feed.connect(port)
            publishers = Publishers(durable_dsn, channels, 3)
            await wait_until(
                lambda: all(len(f.events) >= 10 for f in feeds),
                timeout=30,
                message=lambda: f"live before the kill: {[len(f.events) for f in feeds]}",
            )
            first.proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(30):
                await first.proc.wait()
            for feed in feeds:
                await feed.ended()
        # Nobody relays these: they are only in the log.
        await publishers.publish_more(50)
        async with relay_process("--dsn", durable_dsn, port=port, log=log) as second:
            for feed in feeds[::2]:
                assert feed.last_id is not None
                await feed.connect(port, headers={"Last-Event-ID": feed.last_id})
            assert feeds[1].last_id is not None
            await feeds[1].connect(port, query=f"lastEventId={feeds[1].last_id}")
            await publishers.publish_more(50)
            await publishers.stop()
            await finish(feeds, durable_dsn, publishers.published)
            assert second.proc.returncode is None
    finally:
        if publishers is not None:
            await publishers.cancel()
        for feed in feeds:
            await feed.close()


# -- 4: a 1 MB event ---------------------------------------------------------------------------


def big_text() -> str:
    """A bit over 1 MB of UTF-8 text: line breaks, spaces, quotes, multi-byte characters."""
    alphabet = 'abcdefghij klmnop\nqrstuvwxyz0123456789 é€😀"{}\\'
    return "".join(random.Random(1).choices(alphabet, k=1 << 20))


async def published_payloads(dsn: str, channel: str, datas: Sequence[str]) -> list[str]:
    """Publish ``datas`` durably and return the notification payloads PostgreSQL sent."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen:
        await listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(durable_name(channel))))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for data in datas:
                await apublish_durable(conn, channel, data)
        return [n.payload async for n in listen.notifies(timeout=30, stop_after=len(datas))]


@pytest.mark.timeout(60)
async def test_one_megabyte_event_arrives_whole_in_order_live_and_replayed(
    durable_dsn: str,
) -> None:
    """Only ``{"seq":2,"large":true}`` is notified; the relay reads the body from the log and
    delivers it between its neighbours, live (also on a multi-channel stream) and in replays."""
    channel, other = f"a{name()}", f"b{name()}"
    big = big_text()
    assert len(big.encode()) >= 1_000_000
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        live, multi = Feed([channel]), Feed([other, channel])
        try:
            for feed in (live, multi):
                await feed.connect(relay.port)
            payloads = await published_payloads(durable_dsn, channel, ["before", big, "after"])
            assert json.loads(payloads[1]) == {"seq": 2, "large": True}
            assert json.loads(payloads[0]) == {"seq": 1, "data": "before"}
            await wait_until(
                lambda: len(live.events) >= 3 and len(multi.events) >= 3,
                timeout=30,
                message=lambda: f"live: {live.frames()}\nmulti: {multi.frames()}",
            )
            for feed, ids in ((live, ["1", "2", "3"]), (multi, ["1.0", "2.0", "3.0"])):
                got = [(e.id, len(e.data)) for e in feed.events]
                assert got == [(ids[0], 6), (ids[1], len(big)), (ids[2], 5)], got
                assert [feed.events[0].data, feed.events[2].data] == ["before", "after"]
                assert feed.events[1].data == big, "the large event's body differs"
            assert relay.delivery.filled >= 1  # the body came from the log
            for query, headers, first in [
                ("", {"Last-Event-ID": "0"}, 1),
                ("history=3", None, 1),
                ("lastEventId=1", None, 2),
            ]:
                replay = Feed([channel])
                try:
                    await replay.connect(relay.port, query=query, headers=headers)
                    await wait_until(lambda r=replay, n=first: len(r.events) >= 4 - n, timeout=30)
                    got = [(e.id, len(e.data)) for e in replay.events]
                    want = [("1", 6), ("2", len(big)), ("3", 5)][first - 1 :]
                    assert got == want, (query, headers, got)
                    assert replay.events[2 - first].data == big
                finally:
                    await replay.close()
            assert relay.hub.slow_dropped == 0
        finally:
            await live.close()
            await multi.close()


# -- 5: retention --------------------------------------------------------------------------------


def missed(message: SseMessage) -> dict[str, Any]:
    assert message.event == "missed" and message.id is None, message
    data = json.loads(message.data)
    assert isinstance(data, dict), message
    return data


@pytest.mark.timeout(60)
async def test_pruned_events_give_missed_then_what_is_left(durable_dsn: str) -> None:
    """Ten events, then ``prune(max_count=3)``: ids 8..10 are left.

    - ``Last-Event-ID: 2`` needed 3..7, which are gone: it gets ``missed`` (after 2, resumed at
      7, reason ``retention``, no ``id:`` so the browser's last id is not disturbed), then 8..10,
      then live events.
    - ``Last-Event-ID: 7`` lost nothing it needed: no ``missed``, just 8..10 and live.
    - ``?history=5`` asks for *up to* the last five events and gets the three that are left,
      **without** ``missed``. A ``missed`` event tells a page that state it holds has a hole
      and must be reloaded; a page asking for history holds no state yet, and the events
      before its window are skipped by design anyway. Sending ``missed`` would make every
      page that asks for more history than retention keeps reload on every visit.
    - A multi-channel stream (``a.b`` ids) gets ``missed`` for the pruned channel only.
    """
    channel, other = f"a{name()}", f"b{name()}"
    async with await psycopg.AsyncConnection.connect(durable_dsn, autocommit=True) as conn:
        for i in range(1, 11):
            await apublish_durable(conn, channel, f"m{i}")
        for i in range(1, 3):
            await apublish_durable(conn, other, f"o{i}")
    assert prune(durable_dsn, max_count=3) == 7
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        behind = Feed([channel])
        query_behind = Feed([channel])
        close = Feed([channel])
        history = Feed([channel])
        both = Feed([other, channel])
        feeds = [behind, query_behind, close, history, both]
        try:
            await behind.connect(relay.port, headers={"Last-Event-ID": "2"})
            await query_behind.connect(relay.port, query="lastEventId=2")
            await close.connect(relay.port, headers={"Last-Event-ID": "7"})
            await history.connect(relay.port, query="history=5")
            await both.connect(relay.port, headers={"Last-Event-ID": "2.0"})
            await apublish_durable(durable_dsn, channel, "m11")
            wanted = [4 + 1, 4 + 1, 3 + 1, 3 + 1, 1 + 3 + 2 + 1]
            await wait_until(
                lambda: all(len(f.events) >= n for f, n in zip(feeds, wanted, strict=True)),
                timeout=30,
                message=lambda: "\n".join(f.frames() for f in feeds),
            )
            after = {"channel": channel, "after": 2, "resumed_at": 7, "reason": "retention"}
            rest = [("8", "m8"), ("9", "m9"), ("10", "m10"), ("11", "m11")]
            for feed in (behind, query_behind):
                assert missed(feed.events[0]) == after, feed.frames()
                assert [(e.id, e.data) for e in feed.events[1:]] == rest, feed.frames()
            for feed in (close, history):
                assert [(e.id, e.data) for e in feed.events] == rest, feed.frames()
            assert missed(both.events[0]) == after, both.frames()
            assert [(e.id, e.data) for e in both.events[1:]] == [
                ("8.0", "m8"),
                ("9.0", "m9"),
                ("10.0", "m10"),
                ("10.1", "o1"),
                ("10.2", "o2"),
                ("11.2", "m11"),
            ], both.frames()
            for feed, n in zip(feeds, wanted, strict=True):
                assert len(feed.events) == n, feed.frames()
        finally:
            for feed in feeds:
                await feed.close()


# -- 6: malformed Last-Event-ID ------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_malformed_last_event_id_starts_from_now_and_relay_keeps_serving(
    durable_dsn: str,
) -> None:
    """Any id that is not the stream's positions is ignored: 200, no replay, live from
    ``: ready``. (EventSource gives up for good on a non-200 answer.)"""
    channel, other = f"a{name()}", f"b{name()}"
    for i in range(3):
        await apublish_durable(durable_dsn, channel, f"old {i}")
    headers = ["abc", "-1", "99999999999999999999", "٣", "1.2", "", " ", "1e3", "0x1", "+1", "1."]
    queries = ["%00", "", "-1", "%D9%A3", "abc", "1%002", "99999999999999999999"]
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        feeds: list[Feed] = []
        try:
            for value in headers:
                feeds.append(feed := Feed([channel]))
                await feed.connect(relay.port, headers={"Last-Event-ID": value})
            for value in queries:
                feeds.append(feed := Feed([channel]))
                await feed.connect(relay.port, query=f"lastEventId={value}")
            for value in ["1", "1.2.3", "x.1"]:  # wrong count or junk for two channels
                feeds.append(feed := Feed([channel, other]))
                await feed.connect(relay.port, headers={"Last-Event-ID": value})
            await apublish_durable(durable_dsn, channel, "new")
            await wait_until(
                lambda: all(f.events for f in feeds),
                timeout=30,
                message=lambda: "\n".join(f"{f.path}: {f.frames()}" for f in feeds),
            )
            for feed in feeds:
                want = "4" if len(feed.channels) == 1 else "4.0"
                assert [(e.id, e.data) for e in feed.events] == [(want, "new")], feed.frames()
            assert relay.delivery.replayed == 0
            # Still serving, replay included.
            health = await raw_request(HOST, relay.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert health.status == 200, health.body
            feeds.append(good := Feed([channel]))
            await good.connect(relay.port, headers={"Last-Event-ID": "2"})
            await wait_until(lambda: len(good.events) >= 2, timeout=30, message=good.frames)
            assert [e.data for e in good.events] == ["old 2", "new"]
        finally:
            for feed in feeds:
                await feed.close()


# -- 7: a reconnect wave shares its reads; max_replay --------------------------------------------


async def read_events(client: SseClient, count: int, timeout: float = 60) -> list[SseMessage]:
    """The next ``count`` events of a chunked stream, read in large blocks.

    ``SseClient.next_event`` costs a few tens of microseconds per event, too slow for the
    240,000 events of a reconnect wave; this parses the same frames in bulk.
    """
    events: list[SseMessage] = []
    raw, text = b"", ""
    async with asyncio.timeout(timeout):
        while len(events) < count:
            data = await client.reader.read(1 << 20)
            if not data:
                raise StreamClosed(f"after {len(events)} events")
            raw += data
            parts, pos = [], 0
            while (line_end := raw.find(b"\r\n", pos)) >= 0:
                end = line_end + 2 + int(raw[pos:line_end], 16) + 2
                if end > len(raw):
                    break
                parts.append(raw[line_end + 2 : end - 2])
                pos = end
            raw = raw[pos:]
            *blocks, text = (text + b"".join(parts).decode()).split("\n\n")
            events += [m for m in map(parse_block, blocks) if m.is_event]
    return events


@pytest.mark.timeout(90)
async def test_reconnect_wave_shares_reads_and_max_replay_bounds_catch_up(
    dsn: str, durable_dsn: str
) -> None:
    """200 clients come back at the same ``Last-Event-ID`` with 1,200 events to catch up on.

    The log is locked while they connect, so all 200 catch-ups are provably in flight at
    once whatever the machine's speed (a slow database after a relay restart); once it is
    released, each batch is read once for all of them. Then a relay with ``max_replay=50``
    gives a client 100 events behind ``missed`` and exactly the last 50.
    """
    channel = name()
    start, total, clients_n = 50, 1250, 200
    async with await psycopg.AsyncConnection.connect(durable_dsn, autocommit=True) as conn:
        await conn.execute(
            "SELECT sserelay.publish(%s, 'm' || g) FROM generate_series(1, %s) AS g",
            (channel, total),
        )
    headers = {"Last-Event-ID": str(start)}
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        reader = relay.log
        clients: list[SseClient] = []
        locker = await psycopg.AsyncConnection.connect(durable_dsn)
        try:
            await locker.execute("LOCK TABLE sserelay.events IN ACCESS EXCLUSIVE MODE")
            clients += await asyncio.gather(
                *(
                    SseClient.open(HOST, relay.port, f"/events/{channel}", headers, timeout=30)
                    for _ in range(clients_n)
                )
            )
            # All 200 are catching up, waiting behind the channel's first read (locked out).
            assert relay.hub.stream_count == clients_n
            await wait_until(
                lambda: readers_waiting_on_a_lock(dsn, dbname(durable_dsn)), interval=0.05
            )
            await locker.rollback()
            results = await asyncio.gather(*(read_events(c, total - start) for c in clients))
            want = [(str(i), f"m{i}") for i in range(start + 1, total + 1)]
            for index, events in enumerate(results):
                assert [(e.id, e.data) for e in events] == want, f"client {index}"
            print(f"\nreconnect wave: {reader.queries} queries, {reader.shared} shared reads")
            assert reader.queries <= 30, (reader.queries, reader.shared)
            assert reader.shared >= 3 * (clients_n - 1), (reader.queries, reader.shared)
            assert relay.delivery.replayed == clients_n * (total - start)
            assert relay.hub.slow_dropped == 0
            # Then live, once, for all of them.
            await apublish_durable(durable_dsn, channel, "live")
            lives = await asyncio.gather(*(read_events(c, 1) for c in clients))
            assert all([(e.id, e.data) for e in got] == [(str(total + 1), "live")] for got in lives)
        finally:
            await locker.close()
            await asyncio.gather(*(c.close() for c in clients))
    total += 1
    async with running_relay(durable_dsn, heartbeat=30.0, max_replay=50) as relay:
        behind = Feed([channel])
        try:
            await behind.connect(relay.port, headers={"Last-Event-ID": str(total - 100)})
            await wait_until(lambda: len(behind.events) >= 51, timeout=30, message=behind.frames)
            assert missed(behind.events[0]) == {
                "channel": channel,
                "after": total - 100,
                "resumed_at": total - 50,
                "reason": "too many events",
            }
            assert [e.id for e in behind.events[1:]] == [
                str(i) for i in range(total - 49, total + 1)
            ]
            await apublish_durable(durable_dsn, channel, "after")
            await wait_until(lambda: len(behind.events) >= 52, timeout=30, message=behind.frames)
            assert [(e.id, e.data) for e in behind.events[51:]] == [(str(total + 1), "after")]
        finally:
            await behind.close()


# -- 8: a raw channel beside a durable one --------------------------------------------------------


@pytest.mark.timeout(60)
async def test_raw_notify_beside_durable_channel_on_one_stream(durable_dsn: str) -> None:
    """Raw NOTIFYs keep working on a stream that also carries a durable channel. They carry no
    ``id:``, so the browser's last id stays the stream's composite one and a reconnect with it
    resumes the durable channel exactly (raw events are never replayed)."""
    durable_channel, raw_channel = f"a{name()}", f"b{name()}"
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        both = Feed([raw_channel, durable_channel])
        raw_only = Feed([raw_channel])
        feeds = [both, raw_only]
        try:
            for feed in feeds:
                await feed.connect(relay.port)
            await apublish_durable(durable_dsn, durable_channel, "d1")
            await notify(durable_dsn, raw_channel, "plain text")
            await notify(durable_dsn, raw_channel, json.dumps({"event": "note", "data": {"x": 1}}))
            await apublish_durable(durable_dsn, durable_channel, "d2")
            await wait_until(lambda: len(both.events) >= 4, timeout=30, message=both.frames)
            await wait_until(lambda: len(raw_only.events) >= 2, timeout=30, message=raw_only.frames)
            assert [(e.id, e.event, e.data) for e in both.events] == [
                ("1.0", "message", "d1"),
                (None, "message", "plain text"),
                (None, "note", '{"x":1}'),
                ("2.0", "message", "d2"),
            ], both.frames()
            assert [(e.id, e.data) for e in raw_only.events] == [
                (None, "plain text"),
                (None, '{"x":1}'),
            ]
            # The browser's last id after the raw events is still the composite one.
            last_id_after_raw = [e.id for e in both.events[:3] if e.id is not None][-1]
            assert last_id_after_raw == "1.0"
            assert both.last_id == "2.0"
            again = Feed([raw_channel, durable_channel])
            feeds.append(again)
            await again.connect(relay.port, headers={"Last-Event-ID": last_id_after_raw})
            await wait_until(lambda: len(again.events) >= 1, timeout=30, message=again.frames)
            await notify(durable_dsn, raw_channel, "raw again")
            await apublish_durable(durable_dsn, durable_channel, "d3")
            await wait_until(lambda: len(again.events) >= 3, timeout=30, message=again.frames)
            assert [(e.id, e.data) for e in again.events] == [
                ("2.0", "d2"),
                (None, "raw again"),
                ("3.0", "d3"),
            ], again.frames()
        finally:
            for feed in feeds:
                await feed.close()


@pytest.mark.timeout(60)
async def test_raw_text_that_looks_durable_stays_raw(durable_dsn: str) -> None:
    """A raw NOTIFY whose text looks like a durable notification (user text forwarded as
    is, which the README allows) is delivered as the text it is, and moves no position:
    the durable events that follow all arrive (before schema version 3 they were dropped
    as duplicates for every subscriber on the relay)."""
    channel = f"a{name()}"
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        for i in range(1, 4):
            await apublish_durable(durable_dsn, channel, f"real {i}")
        feed = Feed([channel])
        try:
            await feed.connect(relay.port)
            for text in ('{"seq":4,"data":"looks durable"}', '{"seq":99,"large":true}'):
                await notify(durable_dsn, channel, text)
            for i in range(4, 7):
                await apublish_durable(durable_dsn, channel, f"real {i}")
            await wait_until(lambda: len(feed.events) >= 5, timeout=30, message=feed.frames)
            assert [(e.id, e.data) for e in feed.events] == [
                (None, '{"seq":4,"data":"looks durable"}'),
                (None, '{"seq":99,"large":true}'),
                ("4", "real 4"),
                ("5", "real 5"),
                ("6", "real 6"),
            ], feed.frames()
            assert relay.delivery.position(channel) == 6
            assert relay.delivery.unconfirmed == 0
        finally:
            await feed.close()


async def test_notifications_the_log_cannot_back_are_dropped_not_read_for_ever(
    durable_dsn: str,
) -> None:
    """A notification on a channel's durable name that the log does not back (forged, or
    from a log that was reset) is dropped and counted, and moves no position; a large
    event pruned before the relay could read its body is reported as ``missed``. Either
    way the relay reads the log a bounded number of times, not in a tight loop."""
    channel = f"b{name()}"
    async with running_relay(durable_dsn, heartbeat=30.0) as relay:
        feed = Feed([channel])
        try:
            await feed.connect(relay.port)
            before = relay.log.queries
            await notify(durable_dsn, durable_name(channel), '{"seq":5,"data":"forged"}')
            await wait_until(lambda: relay.delivery.unconfirmed == 1, timeout=30)
            assert relay.delivery.position(channel) == 0
            async with await psycopg.AsyncConnection.connect(durable_dsn) as conn:
                # Published and pruned in one transaction: only {"seq":1,"large":true} is left.
                await conn.execute("SELECT sserelay.publish(%s, %s)", (channel, "x" * 10_000))
                await conn.execute("SELECT sserelay.prune(NULL, 0)")
            await wait_until(
                lambda: (
                    relay.delivery.position(channel) == 1
                    and not any(s.filling for s in relay.delivery.states.values())
                ),
                timeout=10,
                message=lambda: f"still reading the log: {relay.log.queries} queries",
            )
            await apublish_durable(durable_dsn, channel, "next")
            await wait_until(lambda: len(feed.events) >= 2, timeout=30, message=feed.frames)
            missed, after = feed.events
            assert missed.event == "missed", feed.frames()
            assert json.loads(missed.data) == {
                "channel": channel,
                "after": 0,
                "resumed_at": 1,
                "reason": "retention",
            }
            assert (after.id, after.data) == ("2", "next")
            assert relay.log.queries - before <= 10, relay.log.queries - before
        finally:
            await feed.close()


# -- the listener reconnects while a fill's read is in flight ------------------------------------


class HeldProxy:
    """A TCP proxy to PostgreSQL that can hold back the answer to one query.

    With the relay's log reader behind it, a read can be frozen after the server ran it
    (its snapshot taken) but before the relay sees its rows.
    """

    def __init__(self, dsn: str) -> None:
        info = conninfo_to_dict(dsn)
        self.target = (str(info.get("host", HOST)), int(info.get("port", 5432)))
        #: The next query whose text contains this is answered only once ``release()``d.
        self.hold: bytes | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> HeldProxy:
        self.server = await asyncio.start_server(self._connection, HOST, 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def release(self) -> None:
        self.hold = None
        self.flowing.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await open_upstream(*self.target)
        self._writers += [writer, up_writer]
        self._tasks += [
            asyncio.create_task(self._pipe(reader, up_writer, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, upstream=False)),
        ]

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if upstream and self.hold is not None and self.hold in data:
                    self.hold = None
                    self.flowing.clear()
                if not upstream:
                    await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self.server.wait_closed()


async def server_time(dsn: str) -> datetime.datetime:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT clock_timestamp()")
        row = await cursor.fetchone()
    assert row is not None
    now: datetime.datetime = row[0]
    return now


async def read_done_but_held(admin_dsn: str, database: str, since: datetime.datetime) -> bool:
    """A log reader ran a ``read_after`` begun after ``since`` to the end, on the server."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = %s AND state = 'idle' AND query LIKE 'SELECT id, event, data%%'"
            " AND query_start > %s",
            (READER_APP, database, since),
        )
        row = await cursor.fetchone()
    return row is not None and row[0] > 0


@pytest.mark.timeout(60)
async def test_listener_reconnect_during_a_fill_read_is_not_lost(
    dsn: str, durable_dsn: str
) -> None:
    """A large event makes the relay read the log; that read runs on the server but its rows
    are held back. Meanwhile the listener's connection dies, an event is committed that
    nobody is notified of, and the listener comes back. The read in flight predates that
    event, so the relay must read again after the new LISTEN, not call the channel filled."""
    channel = name()
    database = dbname(durable_dsn)
    async with HeldProxy(durable_dsn) as proxy:
        through_proxy = make_conninfo(durable_dsn, host=HOST, port=proxy.port)
        async with running_relay(
            through_proxy, listen_dsn=durable_dsn, heartbeat=30.0, **FAST_RECONNECT
        ) as relay:
            listener = relay.listener
            feed = Feed([channel])
            publisher = await psycopg.AsyncConnection.connect(durable_dsn, autocommit=True)
            try:
                await feed.connect(relay.port)
                since = await server_time(dsn)
                proxy.hold = b"FROM sserelay.events"
                await apublish_durable(publisher, channel, "x" * 10_000)  # large: read the log
                await wait_until(lambda: not proxy.flowing.is_set(), timeout=30)
                await wait_until(
                    lambda: read_done_but_held(dsn, database, since), timeout=30, interval=0.05
                )
                await allow_connections(dsn, database, False)
                try:
                    assert await terminate(dsn, database, LISTENER_APP) == 1
                    await wait_until(lambda: not listener.connected, timeout=30)
                    await apublish_durable(publisher, channel, "committed while not listening")
                finally:
                    await allow_connections(dsn, database, True)
                await wait_until(
                    lambda: listener.reconnects == 1 and listener.healthy,
                    timeout=30,
                    message=lambda: f"reconnects={listener.reconnects} {listener.last_error}",
                )
                proxy.release()
                await wait_until(lambda: len(feed.events) >= 2, timeout=10, message=feed.frames)
                assert [(e.id, len(e.data)) for e in feed.events] == [("1", 10_000), ("2", 29)]
            finally:
                proxy.release()
                await publisher.close()
                await feed.close()
