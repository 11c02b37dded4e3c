"""Row changes made by anything that writes to PostgreSQL reach browsers' streams through
``serve --capture``: event names, data, routing, column lists, row filters, rollbacks,
a large UPDATE, DDL during capture, TOAST, rows no channel can be made for."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from capture_helpers import execute, psql, running_capturer

from sserelay.bus.postgres.capture import rules
from sserelay.bus.postgres.capture.lsn import parse_lsn
from sserelay.errors import ConfigError
from sserelay.relay import Relay
from sserelay.testing import SseClient, running_relay, showing_frames, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

Stream = Callable[[str], Awaitable[SseClient]]


def add_rule(dsn: str, table: str, channel: str, **kw: Any) -> rules.Rule:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return rules.add(conn, table, channel, **kw)


@pytest.fixture
async def relay(capture_dsn: str) -> AsyncIterator[Relay]:
    """A relay with capture on, streaming from the slot."""
    async with running_relay(capture_dsn, capture=True, heartbeat=30.0) as relay:
        capturer = relay.capturer
        assert capturer is not None
        assert "capture" in relay.tasks.running()  # a supervised service, as the listener
        await wait_until(lambda: capturer.streaming, timeout=30, message=lambda: capturer.role)
        yield relay


@pytest.fixture
async def stream(relay: Relay) -> AsyncIterator[Callable[[str], Awaitable[SseClient]]]:
    """Open a stream on the relay (``await stream("/events/x")``), ready; closed after."""
    clients: list[SseClient] = []

    async def open_stream(path: str) -> SseClient:
        client = await SseClient.open("127.0.0.1", relay.port, path)
        clients.append(client)
        await client.wait_ready()
        return client

    yield open_stream
    for client in clients:
        await client.close()


async def test_changes_from_psql_reach_a_stream(
    capture_dsn: str, relay: Relay, stream: Stream
) -> None:
    execute(
        capture_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric,"
        " due timestamptz DEFAULT '2024-05-01 12:00:00+02')",
    )
    add_rule(capture_dsn, "orders", "orders")
    client = await stream("/events/orders")
    with showing_frames(client):
        for command in (
            "INSERT INTO orders VALUES (1, 'new', 9.99)",
            "UPDATE orders SET status = 'paid' WHERE id = 1",
            "DELETE FROM orders WHERE id = 1",
        ):
            await asyncio.to_thread(psql, capture_dsn, command)
        insert, update, delete = [await client.next_event() for _ in range(3)]
    assert [e.event for e in (insert, update, delete)] == [
        "orders.insert",
        "orders.update",
        "orders.delete",
    ]
    assert [e.id for e in (insert, update, delete)] == ["1", "2", "3"]
    first, second, third = (json.loads(e.data) for e in (insert, update, delete))
    due = "2024-05-01T10:00:00+00:00"
    assert first["new"] == {"id": 1, "status": "new", "total": 9.99, "due": due}
    assert second["new"] == {"id": 1, "status": "paid", "total": 9.99, "due": due}
    assert second["key"] == {"id": 1}
    assert third == {"key": {"id": 1}, "lsn": third["lsn"], "commit_time": third["commit_time"]}
    lsns = [parse_lsn(d["lsn"]) for d in (first, second, third)]
    assert lsns == sorted(lsns) and len(set(lsns)) == 3  # three transactions, in commit order


async def test_templates_route_rows_by_column(
    capture_dsn: str, relay: Relay, stream: Stream
) -> None:
    execute(
        capture_dsn,
        "CREATE TABLE message (id serial PRIMARY KEY, room_id int NOT NULL, body text)",
        "ALTER TABLE message REPLICA IDENTITY FULL",
    )
    add_rule(capture_dsn, "public.message", "room-{room_id}", event_prefix="message")
    one = await stream("/events/room-1")
    two = await stream("/events/room-2")
    with showing_frames(one, two):
        execute(
            capture_dsn,
            "INSERT INTO message (room_id, body) VALUES (1, 'a'), (2, 'b'), (1, 'c')",
            "DELETE FROM message WHERE body = 'b'",
        )
        got_one = [json.loads((await one.next_event()).data)["new"]["body"] for _ in range(2)]
        got_two = [await two.next_event() for _ in range(2)]
    assert got_one == ["a", "c"]
    assert [e.event for e in got_two] == ["message.insert", "message.delete"]
    assert json.loads(got_two[1].data)["key"]["body"] == "b"


async def test_column_lists_and_row_filters(capture_dsn: str, relay: Relay, stream: Stream) -> None:
    execute(
        capture_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, status text, secret text, total numeric)",
    )
    add_rule(
        capture_dsn,
        "orders",
        "orders",
        columns=["id", "status", "total"],
        row_filter="status <> 'draft'",
        events=["insert"],
    )
    client = await stream("/events/orders")
    with showing_frames(client):
        execute(
            capture_dsn,
            "INSERT INTO orders VALUES (1, 'draft', 's1', 1)",
            "INSERT INTO orders VALUES (2, 'paid', 's2', 2)",
            "UPDATE orders SET status = 'x'",  # not captured: insert only
            "INSERT INTO orders VALUES (3, 'paid', 's3', 3)",
        )
        events = [json.loads((await client.next_event()).data)["new"] for _ in range(2)]
    assert events == [
        {"id": 2, "status": "paid", "total": 2},
        {"id": 3, "status": "paid", "total": 3},
    ]


def test_rules_that_would_break_writers_are_refused(capture_dsn: str) -> None:
    execute(capture_dsn, "CREATE TABLE orders (id int PRIMARY KEY, status text)")
    with pytest.raises(ConfigError, match="replica identity"):
        add_rule(capture_dsn, "orders", "orders", row_filter="status <> 'draft'")
    with pytest.raises(ConfigError, match="syntax error"):
        add_rule(capture_dsn, "orders", "orders", row_filter="status <>", events=["insert"])
    with pytest.raises(
        ConfigError, match="cannot insert multiple commands into a prepared statement"
    ):
        add_rule(
            capture_dsn,
            "orders",
            "orders",
            row_filter="true); DROP TABLE orders; --",
            events=["insert"],
        )
    # Nothing was installed: the application's writes still work, the table is still there.
    execute(capture_dsn, "INSERT INTO orders VALUES (1, 'a')", "UPDATE orders SET status = 'b'")
    with psycopg.connect(capture_dsn) as conn:
        assert rules.load_rules(conn) == []


async def test_rolled_back_transactions_produce_nothing(
    capture_dsn: str, relay: Relay, stream: Stream
) -> None:
    execute(capture_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    add_rule(capture_dsn, "t", "t")
    client = await stream("/events/t")
    with showing_frames(client):
        with psycopg.connect(capture_dsn) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.rollback()
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (2)")
                with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                    conn.execute("INSERT INTO t VALUES (3)")  # a rolled-back savepoint
                    conn.execute("SELECT 1/0")
            conn.commit()
        execute(capture_dsn, "INSERT INTO t VALUES (4)")
        first = await client.next_event()
        second = await client.next_event()
    assert [json.loads(e.data)["new"]["id"] for e in (first, second)] == [2, 4]


async def test_a_10000_row_update_arrives_in_order_exactly_once(
    capture_dsn: str, relay: Relay, stream: Stream
) -> None:
    execute(
        capture_dsn,
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL)",
        "INSERT INTO big SELECT g, 0 FROM generate_series(1, 10000) AS g",
    )
    add_rule(capture_dsn, "big", "big", events=["update"])
    client = await stream("/events/big")
    with showing_frames(client):
        execute(capture_dsn, "UPDATE big SET v = v + 1")
        events = [await client.next_event(timeout=60) for _ in range(10000)]
    assert [e.id for e in events] == [str(i) for i in range(1, 10001)]
    rows = [json.loads(e.data) for e in events]
    assert sorted(r["new"]["id"] for r in rows) == list(range(1, 10001))
    assert {r["new"]["v"] for r in rows} == {1}
    assert len({r["lsn"] for r in rows}) == 1  # one source transaction
    with psycopg.connect(capture_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM sserelay.events WHERE channel = 'big'")
        assert count.fetchone() == (10000,)


async def test_ddl_during_capture(capture_dsn: str, relay: Relay, stream: Stream) -> None:
    execute(capture_dsn, "CREATE TABLE t (id int PRIMARY KEY, a text)")
    add_rule(capture_dsn, "t", "t")
    client = await stream("/events/t")
    with showing_frames(client):
        execute(
            capture_dsn,
            "INSERT INTO t VALUES (1, 'x')",
            "ALTER TABLE t ADD COLUMN b int DEFAULT 7",
            "INSERT INTO t VALUES (2, 'y', 8)",
            "ALTER TABLE t DROP COLUMN a",
            "UPDATE t SET b = 9 WHERE id = 1",
        )
        rows = [json.loads((await client.next_event()).data)["new"] for _ in range(3)]
    assert rows == [{"id": 1, "a": "x"}, {"id": 2, "a": "y", "b": 8}, {"id": 1, "b": 9}]


async def test_unchanged_toasted_values(capture_dsn: str, relay: Relay, stream: Stream) -> None:
    execute(
        capture_dsn,
        "CREATE TABLE doc (id int PRIMARY KEY, title text, body text)",
        "ALTER TABLE doc ALTER body SET STORAGE EXTERNAL",  # out of line, uncompressed
        "CREATE TABLE full_doc (LIKE doc INCLUDING ALL)",
        "ALTER TABLE full_doc REPLICA IDENTITY FULL",
    )
    add_rule(capture_dsn, "doc", "docs")
    add_rule(capture_dsn, "full_doc", "docs")
    client = await stream("/events/docs")
    body = "z" * 5000
    with showing_frames(client):
        for table in ("doc", "full_doc"):
            execute(capture_dsn, f"INSERT INTO {table} VALUES (1, 'a', %s)", params=(body,))
            execute(capture_dsn, f"UPDATE {table} SET title = 'b'")
        events = [json.loads((await client.next_event()).data) for _ in range(4)]
    assert events[0]["new"]["body"] == body
    assert events[1]["new"] == {"id": 1, "title": "b"} and events[1]["unchanged"] == ["body"]
    assert events[3]["new"] == {"id": 1, "title": "b", "body": body}  # from the old row
    assert "unchanged" not in events[3]


async def test_rows_no_channel_can_be_made_for_are_counted_not_stuck(
    capture_dsn: str, relay: Relay, stream: Stream
) -> None:
    execute(capture_dsn, "CREATE TABLE m (id int PRIMARY KEY, room text)")
    add_rule(capture_dsn, "m", "room-{room}", events=["insert"])
    client = await stream("/events/room-ok")
    with showing_frames(client):
        execute(
            capture_dsn,
            "INSERT INTO m VALUES (1, NULL)",
            f"INSERT INTO m VALUES (2, '{'x' * 80}')",
            "INSERT INTO m VALUES (3, E'bad\\nname'), (4, 'ok')",
        )
        event = await client.next_event()
    assert json.loads(event.data)["new"] == {"id": 4, "room": "ok"}
    capturer = relay.capturer
    assert capturer is not None
    await wait_until(lambda: capturer.counters.rows_skipped == 3)
    assert "control character" in (capturer.counters.last_error or "")
    with psycopg.connect(capture_dsn) as conn:
        row = conn.execute("SELECT rows_skipped, last_error FROM sserelay.capture_state")
        skipped, last_error = row.fetchone()  # type: ignore[misc]
    assert skipped == 3 and "room-{room}" in last_error
    metrics = relay.metrics.render().decode()
    assert "sserelay_capture_rows_skipped_total 3.0" in metrics


async def test_capture_add_takes_effect_at_its_commit(capture_dsn: str) -> None:
    """A table added while capture runs is captured from the rule's commit on: no restart."""
    execute(
        capture_dsn, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int PRIMARY KEY)"
    )
    add_rule(capture_dsn, "a", "a")
    async with running_capturer(capture_dsn) as capturer:
        execute(capture_dsn, "INSERT INTO b VALUES (1)")  # before b's rule: not captured
        add_rule(capture_dsn, "b", "b")
        execute(capture_dsn, "INSERT INTO b VALUES (2)")
        with psycopg.connect(capture_dsn, autocommit=True) as conn:
            rules.remove(conn, "b")
        execute(capture_dsn, "INSERT INTO b VALUES (3)", "INSERT INTO a VALUES (1)")
        await wait_until(lambda: capturer.counters.events == 2, timeout=20)
    with psycopg.connect(capture_dsn) as conn:
        rows = conn.execute(
            "SELECT channel, data::json->'new' FROM sserelay.events ORDER BY channel"
        )
        assert rows.fetchall() == [("a", {"id": 1}), ("b", {"id": 2})]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(300)
async def test_a_100000_row_transaction_is_captured_in_bounded_memory(capture_dsn: str) -> None:
    """100,000 rows (about 25 MB of event data) in one source transaction: written in
    batches while the transaction streams in, into one log transaction."""
    execute(capture_dsn, "CREATE TABLE big (id int PRIMARY KEY, payload text)")
    add_rule(capture_dsn, "big", "big", events=["insert"])
    async with running_capturer(capture_dsn) as capturer:
        base = peak = _rss()
        execute(
            capture_dsn,
            "INSERT INTO big SELECT g, repeat(md5(g::text), 5) FROM generate_series(1, 100000) g",
        )
        async with asyncio.timeout(240):  # sampling memory until then
            while capturer.counters.events < 100_000:
                peak = max(peak, _rss())
                await asyncio.sleep(0.05)
        print(f"memory grew by {(peak - base) / 2**20:.1f} MB")
    assert peak - base < 40 * 2**20, f"grew by {(peak - base) / 2**20:.0f} MB"
    with psycopg.connect(capture_dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT created_at), min(id), max(id) FROM sserelay.events"
        ).fetchone()
    assert row == (100_000, 1, 1, 100_000)  # one log transaction, ids 1..100000


async def test_a_dropped_slot_is_reported_and_recreated_on_request(capture_dsn: str) -> None:
    from sserelay.bus.postgres.capture import slot as capture_slot

    execute(capture_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    add_rule(capture_dsn, "t", "gone")
    with psycopg.connect(capture_dsn, autocommit=True) as conn:
        name = capture_slot.configured_slot(conn)
        assert name is not None and capture_slot.drop_slot(conn, name)
    async with running_capturer(capture_dsn, ready=lambda c: c.role == "slot_lost") as capturer:
        assert "does not exist" in (capturer.error or "")
        assert not capturer.healthy and capturer.status()["role"] == "slot_lost"
        assert capturer.problem() == "capture slot lost"  # a relay's public /healthz reason
        with psycopg.connect(capture_dsn, autocommit=True) as conn:
            missed = conn.execute("SELECT event, data FROM sserelay.events WHERE channel = 'gone'")
            (event, data), *_ = missed.fetchall()
            assert event == "missed" and json.loads(data)["reason"].startswith("capture slot lost")
            assert capture_slot.reset_slot(conn) == (name, ["gone"])
        await wait_until(lambda: capturer.streaming, timeout=30)
        execute(capture_dsn, "INSERT INTO t VALUES (1)")
        await wait_until(lambda: capturer.counters.events == 1, timeout=30)
        assert capturer.healthy
