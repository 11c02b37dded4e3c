"""Durable publishing: ids, notification payloads, commit order, big events, retention.

The tests work in a database of their own with the schema migrated (the shared test
database is left without it, so plain ``publish()`` calls elsewhere stay plain NOTIFYs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sserelay import apublish_durable, cli, publish_durable
from sserelay.bus.postgres import log as durable
from sserelay.bus.postgres import schema
from sserelay.bus.postgres.statements import durable_channel
from sserelay.bus.publish import apublish, publish
from sserelay.cli.common import parse_duration
from sserelay.errors import ConfigError, InvalidChannel, InvalidEvent, PayloadTooLarge
from sserelay.testing import temporary_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(dsn: str) -> Iterator[str]:
    with temporary_database(dsn, migrate=True) as db:
        yield db


@pytest.fixture
def own_db(dsn: str) -> Iterator[str]:
    """A database for one test: prune works on every channel at once."""
    with temporary_database(dsn, migrate=True) as db:
        yield db


@pytest.fixture
def channel() -> str:
    return f"d{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def listening(db: str, channel: str) -> Iterator[psycopg.Connection[Any]]:
    """LISTEN on ``channel`` and on the name its durable events are notified on."""
    with psycopg.connect(db, autocommit=True) as conn:
        for name in (channel, durable_channel(channel)):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        yield conn


def payloads(conn: psycopg.Connection[Any], count: int) -> list[dict[str, Any]]:
    """The next ``count`` notifications (5 s at most), parsed."""
    notes = list(conn.notifies(timeout=5, stop_after=count))
    assert len(notes) == count, f"expected {count} notifications, got {notes}"
    return [json.loads(n.payload) for n in notes]


def rows(db: str, channel: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT id, event, data FROM sserelay.events WHERE channel = %s ORDER BY id",
            (channel,),
        ).fetchall()


def ids(db: str, channel: str) -> list[int]:
    return [row[0] for row in rows(db, channel)]


# -- publishing ------------------------------------------------------------------------


def test_ids_increase_per_channel(db: str, channel: str) -> None:
    other = channel + "b"
    assert [publish_durable(db, channel, f"m{i}") for i in range(3)] == [1, 2, 3]
    assert [publish_durable(db, other, "x") for _ in range(2)] == [1, 2]
    assert rows(db, channel) == [(1, None, "m0"), (2, None, "m1"), (3, None, "m2")]


def test_notification_payload(db: str, channel: str) -> None:
    with listening(db, channel) as conn:
        publish_durable(conn, channel, 'say "hi"\nthen\r\nleave é', event="chat")
        publish_durable(conn, channel, "")
        publish_durable(conn, channel, {"n": [1, 2]}, event="obj")
        notes = list(conn.notifies(timeout=5, stop_after=3))
    assert notes[0].payload.startswith('{"seq":1,')
    assert [json.loads(n.payload) for n in notes] == [
        {"seq": 1, "event": "chat", "data": 'say "hi"\nthen\r\nleave é'},
        {"seq": 2, "data": ""},
        {"seq": 3, "event": "obj", "data": '{"n":[1,2]}'},
    ]
    assert rows(db, channel)[2] == (3, "obj", '{"n":[1,2]}')


def test_rolled_back_transaction_publishes_nothing(db: str, channel: str) -> None:
    with listening(db, channel) as listener, psycopg.connect(db) as conn:
        assert publish_durable(conn, channel, "never") == 1
        conn.rollback()
        assert rows(db, channel) == []
        # Had the rolled-back event been notified, it would arrive before this one.
        assert publish_durable(db, channel, "kept") == 1  # its id was not used up either
        assert payloads(listener, 1) == [{"seq": 1, "data": "kept"}]
    assert rows(db, channel) == [(1, None, "kept")]


def wait_until_blocked(
    watcher: psycopg.Connection[Any], waiter: int, holder: int, thread: threading.Thread
) -> None:
    """Return once backend ``waiter`` waits on a lock held by backend ``holder``."""
    query = (
        "SELECT wait_event_type, %s = ANY(pg_blocking_pids(pid)) FROM pg_stat_activity"
        " WHERE pid = %s"
    )
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        state = watcher.execute(query, (holder, waiter)).fetchone()
        if state == ("Lock", True):
            return
        # The pause between polls doubles as a check that the publisher did not finish.
        thread.join(timeout=0.005)
        assert thread.is_alive(), "the second publisher did not wait for the first"
    raise AssertionError(f"the second publisher never waited on the lock: {state}")


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
def test_ids_follow_commit_order(db: str, channel: str, first_commits: bool) -> None:
    """T1 publishes first; T2, publishing while T1 is still open, must wait for T1 to end.

    With ids from a plain sequence T2 could commit id 2 before T1 commits id 1, and a
    reader resuming after 2 would never see 1. Here T2 blocks on the channel's row lock
    until T1 ends, so it commits after T1 with the next id (or T1's, if T1 rolled back).
    """
    result: dict[str, Any] = {}
    with (
        listening(db, channel) as listener,
        psycopg.connect(db) as t1,
        psycopg.connect(db) as t2,
        psycopg.connect(db, autocommit=True) as watcher,
    ):
        first = publish_durable(t1, channel, "first")  # T1 holds the row lock until it ends

        def second() -> None:
            try:
                result["id"] = publish_durable(t2, channel, "second")
                t2.commit()
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=second)
        thread.start()
        try:
            wait_until_blocked(watcher, t2.info.backend_pid, t1.info.backend_pid, thread)
            assert result == {}
            if first_commits:
                t1.commit()
            else:
                t1.rollback()
        finally:
            thread.join(timeout=10)
        assert not thread.is_alive()
        assert "error" not in result, result

        if first_commits:
            assert result["id"] == first + 1
            assert rows(db, channel) == [(first, None, "first"), (first + 1, None, "second")]
            expected = [{"seq": first, "data": "first"}, {"seq": first + 1, "data": "second"}]
        else:
            assert result["id"] == first  # no gap: the rolled-back id is reused
            assert rows(db, channel) == [(first, None, "second")]
            expected = [{"seq": first, "data": "second"}]
        assert payloads(listener, len(expected)) == expected

    async def resume_after(after: int) -> list[durable.LogEvent]:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            return await durable.read_after(conn, channel, after, 100)

    if first_commits:
        # A reader that saw T1's event and resumes after it gets T2's: nothing is skipped.
        assert [(e.id, e.data) for e in asyncio.run(resume_after(first))] == [(first + 1, "second")]


def test_large_event_is_stored_and_notified_by_id(db: str, channel: str) -> None:
    big = "é" * 500_000 + "\n" + "x" * 24_287  # a megabyte: 1,000,000 + 24,288 bytes
    with listening(db, channel) as conn:
        assert publish_durable(conn, channel, big, event="big") == 1
        assert payloads(conn, 1) == [{"seq": 1, "large": True}]
    assert rows(db, channel) == [(1, "big", big)]


def test_notify_limit_boundary(db: str, channel: str) -> None:
    """The event goes inline while the payload stays under 8000 bytes."""

    def payload_size(data: str) -> int:
        return len(json.dumps({"seq": 1, "data": data}, separators=(",", ":")).encode())

    fits = "x" * (7999 - payload_size(""))
    assert payload_size(fits) == 7999
    with listening(db, channel) as conn:
        publish_durable(conn, channel, fits)
        publish_durable(conn, channel, fits + "x")
        assert payloads(conn, 2) == [{"seq": 1, "data": fits}, {"seq": 2, "large": True}]


def test_oversized_payload_never_fails_when_durable(db: str, channel: str) -> None:
    data = {"text": "y" * 20_000}
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(PayloadTooLarge):
            publish(conn, channel, data, durable=False)
        assert publish(conn, channel, data) == 1
        assert publish(conn, channel, data, durable=True) == 2


@pytest.mark.parametrize(
    "name",
    ["", "x" * 64, "é" * 32, "a\x00b", "tab\there", "sserelay.probe"],
    ids=["empty", "64-bytes", "64-bytes-utf8", "nul", "control", "reserved"],
)
def test_invalid_channel(db: str, name: str) -> None:
    with pytest.raises(InvalidChannel):
        publish_durable(db, name, "data")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "channel name is empty"),
        ("x" * 64, "channel name is 64 bytes; PostgreSQL allows at most 63"),
        ("é" * 32, "channel name is 64 bytes"),
        ("tab\there", "control character"),
        ("sserelay.probe", "reserved"),
    ],
)
def test_sql_function_validates_the_channel(db: str, name: str, message: str) -> None:
    with (
        psycopg.connect(db, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match=message),
    ):
        conn.execute("SELECT sserelay.publish(%s, 'data')", (name,))


def test_sql_function_rejects_null_data_and_line_breaks_in_event(db: str, channel: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match="data is NULL"):
            conn.execute("SELECT sserelay.publish(%s, NULL)", (channel,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="line break"):
            conn.execute("SELECT sserelay.publish(%s, 'x', e'a\\nb')", (channel,))
        conn.execute("SELECT sserelay.publish(%s, 'x', 'fine')", (channel,))
    assert rows(db, channel) == [(1, "fine", "x")]


def test_nul_in_data_is_a_clear_error(db: str, channel: str) -> None:
    with pytest.raises(InvalidEvent, match="NUL"):
        publish_durable(db, channel, "a\x00b")
    with pytest.raises(InvalidEvent, match="line break"):
        publish_durable(db, channel, "a", event="a\nb")
    with pytest.raises(InvalidEvent, match="JSON"):
        publish_durable(db, channel, {"x": float("nan")})
    # Inside JSON a NUL is escaped, so structured data may carry one.
    assert publish_durable(db, channel, {"s": "a\x00b"}) == 1
    assert rows(db, channel) == [(1, None, '{"s":"a\\u0000b"}')]


def test_publish_chooses_the_durable_path(db: str, channel: str) -> None:
    with listening(db, channel) as conn:
        assert publish(db, channel, "via dsn") == 1
        assert publish(conn, channel, "via connection") == 2
        assert publish(conn, channel, "plain", durable=False) is None
        # An id of the caller's among the log's ids would break resume: plain only if asked.
        for own in ({"id": "abc"}, {"retry": 5000}, {"id": 42, "retry": 5000}):
            with pytest.raises(InvalidEvent, match="numbers each channel's events itself"):
                publish(conn, channel, "x", **own)  # type: ignore[arg-type]
            with pytest.raises(InvalidEvent, match="durable"):
                publish(conn, channel, "x", durable=True, **own)  # type: ignore[arg-type]
        assert publish(conn, channel, "own id", id="abc", durable=False) is None
        assert payloads(conn, 4) == [
            {"seq": 1, "data": "via dsn"},
            {"seq": 2, "data": "via connection"},
            {"data": "plain"},
            {"data": "own id", "id": "abc"},
        ]


async def test_async_publish(db: str, channel: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        assert await apublish_durable(conn, channel, "a", event="e") == 1
        assert await apublish_durable(db, channel, [1]) == 2
        assert await apublish(conn, channel, "b") == 3
        assert await apublish(db, channel, "c", durable=True) == 4
        assert await apublish(conn, channel, "raw", durable=False) is None
        with pytest.raises(InvalidEvent, match="leave id out"):
            await apublish(conn, channel, "own id", id=7)
        async with conn.transaction(force_rollback=True):
            assert await apublish(conn, channel, "rolled back") == 5
    assert rows(db, channel) == [(1, "e", "a"), (2, None, "[1]"), (3, None, "b"), (4, None, "c")]


def test_cli_publish(db: str, channel: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["publish", "--dsn", db, channel, "one"]) == 0
    assert cli.main(["publish", "--dsn", db, "--durable", "--event", "e", channel, "two"]) == 0
    assert cli.main(["publish", "--dsn", db, "--no-durable", channel, "three"]) == 0
    assert capsys.readouterr().out.split() == ["1", "2"]
    assert rows(db, channel) == [(1, None, "one"), (2, "e", "two")]


# -- reading ---------------------------------------------------------------------------


async def test_read_functions(db: str, channel: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        assert await durable.read_after(conn, channel, 0, 10) == []
        assert await durable.read_last(conn, channel, 3) == []
        assert await durable.oldest_id(conn, channel) is None
        assert await durable.last_id(conn, channel) is None
        for i in range(1, 6):
            await apublish_durable(conn, channel, f"m{i}", event="odd" if i % 2 else None)

        after = await durable.read_after(conn, channel, 2, 2)
        assert [(e.id, e.event, e.data) for e in after] == [(3, "odd", "m3"), (4, None, "m4")]
        assert isinstance(after[0].created_at, datetime.datetime)
        assert [e.id for e in await durable.read_after(conn, channel, 4, 10)] == [5]
        assert await durable.read_after(conn, channel, 5, 10) == []
        assert [e.id for e in await durable.read_last(conn, channel, 2)] == [4, 5]
        assert [e.id for e in await durable.read_last(conn, channel, 9)] == [1, 2, 3, 4, 5]
        assert await durable.read_last(conn, channel, 0) == []
        assert await durable.oldest_id(conn, channel) == 1
        assert await durable.last_id(conn, channel) == 5
        with pytest.raises(ConfigError):
            await durable.read_after(conn, channel, -1, 10)
        with pytest.raises(ConfigError):
            await durable.read_after(conn, channel, 0, 0)
        with pytest.raises(InvalidChannel):
            await durable.read_last(conn, "", 1)


# -- retention -------------------------------------------------------------------------


def test_prune_by_count(own_db: str) -> None:
    for i in range(5):
        publish_durable(own_db, "a", f"a{i}")
    publish_durable(own_db, "b", "b0")
    assert durable.prune(own_db, max_count=3) == 2
    assert ids(own_db, "a") == [3, 4, 5]
    assert ids(own_db, "b") == [1]
    assert durable.prune(own_db, max_count=3) == 0
    assert durable.prune(own_db, max_count=0) == 4
    assert ids(own_db, "a") == ids(own_db, "b") == []
    assert publish_durable(own_db, "a", "next") == 6  # ids go on where they were


def test_prune_by_age(own_db: str) -> None:
    for i in range(5):
        publish_durable(own_db, "a", f"a{i}")
    with psycopg.connect(own_db) as conn:
        # Ids 1, 2 and 4 are old; 4 waits until 3 goes: the log never gets a hole.
        conn.execute(
            "UPDATE sserelay.events SET created_at = now() - interval '8 days'"
            " WHERE channel = 'a' AND id IN (1, 2, 4)"
        )
        conn.execute(
            "INSERT INTO sserelay.events (channel, id, data, created_at)"
            " VALUES ('old', 1, 'x', now() - interval '30 days')"
        )
    assert durable.prune(own_db, max_age=datetime.timedelta(days=7)) == 3
    assert ids(own_db, "a") == [3, 4, 5]
    assert ids(own_db, "old") == []
    assert durable.prune(own_db, max_age=datetime.timedelta(days=7), max_count=1) == 2
    assert ids(own_db, "a") == [5]


def test_prune_cli(own_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(4):
        publish_durable(own_db, "a", f"a{i}")
    assert cli.main(["prune", "--dsn", own_db, "--max-age", "7d", "--max-count", "1"]) == 0
    assert capsys.readouterr().out == "sserelay: pruned 3 events\n"
    assert cli.main(["prune", "--dsn", own_db]) == 2


def test_only_one_pruner_at_a_time(own_db: str) -> None:
    publish_durable(own_db, "a", "x")
    with psycopg.connect(own_db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (schema.PRUNE_LOCK_KEY,))
        assert durable.prune(own_db, max_count=0) is None
    assert durable.prune(own_db, max_count=0) == 1


def test_prune_does_not_block_publishers(own_db: str) -> None:
    for i in range(3):
        publish_durable(own_db, "a", f"a{i}")
    with psycopg.connect(own_db) as pruner:
        assert durable.prune(pruner, max_count=0) == 3  # its transaction is still open
        # A publisher on the same channel goes straight through meanwhile.
        with psycopg.connect(own_db, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            assert publish_durable(conn, "a", "during") == 4


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"max_count": -1}, {"max_age": datetime.timedelta(days=-1)}],
)
def test_prune_rejects_bad_arguments(db: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        durable.prune(db, **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", datetime.timedelta(days=7)),
        ("12h", datetime.timedelta(hours=12)),
        ("1d12h", datetime.timedelta(days=1, hours=12)),
        ("90m", datetime.timedelta(minutes=90)),
        ("30s", datetime.timedelta(seconds=30)),
        ("2w", datetime.timedelta(weeks=2)),
        ("1.5h", datetime.timedelta(minutes=90)),
        ("3600", datetime.timedelta(hours=1)),  # bare seconds, as in SSERELAY_RETENTION_AGE
    ],
)
def test_parse_duration(text: str, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0", "d", "7x", "7d x", "-1d", "1.5.2h", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(Exception, match="not a positive duration"):
        parse_duration(text)
