"""The publish API against a real PostgreSQL: what arrives, when, and what is refused.

Every test LISTENs on a channel of its own with a separate psycopg connection and
reads what arrives with ``conn.notifies(timeout=...)``. "Nothing arrived" is never
checked by waiting: a marker is NOTIFYed afterwards from yet another connection,
and PostgreSQL delivers notifications in commit order, so whatever arrives before
the marker is everything that was sent before it.

These tests are about the raw NOTIFY path: ``durable=False`` is passed when
``publish`` has that parameter (durable publishing is tested elsewhere).
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sserelay import (
    InvalidChannel,
    InvalidEvent,
    PayloadTooLarge,
    PublishError,
    SseRelayError,
    apublish,
    encode_payload,
    publish,
)
from sserelay.bus.publish import MAX_PAYLOAD_BYTES
from sserelay.testing import temporary_database
from sserelay.wire.envelope import event_from_notification

pytestmark = pytest.mark.integration

#: Nothing listens here: a publish that got as far as connecting would fail with PublishError.
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"


def raw(func: Callable[..., Any]) -> dict[str, Any]:
    """Keyword arguments selecting the raw NOTIFY path, if ``func`` has a choice."""
    return {"durable": False} if "durable" in inspect.signature(func).parameters else {}


Fields = tuple[str, str | None, str | None, int | None]


class Listener:
    """A LISTEN connection of its own, reading notifications with a deadline."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn = dsn
        self.channel = channel
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.pending: deque[psycopg.Notify] = deque()

    def next(self, timeout: float = 10.0) -> psycopg.Notify:
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"nothing arrived on {self.channel!r} within {timeout} s")
            # Exhaust the generator: leaving it early drops the rest of a batch.
            self.pending.extend(self.conn.notifies(timeout=remaining, stop_after=1))
        return self.pending.popleft()

    def event(self, timeout: float = 10.0) -> Fields:
        """The next notification as the relay maps it: (data, event, id, retry)."""
        notify = self.next(timeout)
        assert notify.channel == self.channel
        ev = event_from_notification(notify.channel, notify.payload)
        return ev.data, ev.event, ev.id, ev.retry

    def until_marker(self) -> list[str]:
        """Send a marker from another connection; the payloads that arrived before it."""
        marker = f"marker-{uuid.uuid4().hex}"
        with psycopg.connect(self.dsn, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, marker))
        seen = []
        while (payload := self.next().payload) != marker:
            seen.append(payload)
        return seen

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def channel() -> str:
    return f"test-publish-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def listener(dsn: str, channel: str) -> Iterator[Listener]:
    listener = Listener(dsn, channel)
    yield listener
    listener.close()


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


# -- delivery ------------------------------------------------------------------------


def test_publish_with_a_dsn(dsn: str, channel: str, listener: Listener) -> None:
    publish(dsn, channel, "Hello, world!", event="greeting", id="7", **raw(publish))
    assert listener.event() == ("Hello, world!", "greeting", "7", None)


def test_publish_with_a_connection(
    conn: psycopg.Connection[Any], channel: str, listener: Listener
) -> None:
    publish(conn, channel, {"text": "hi", "n": [1, 2]}, id=42, retry=5000, **raw(publish))
    assert listener.event() == ('{"text":"hi","n":[1,2]}', None, "42", 5000)


def test_events_arrive_in_order(
    conn: psycopg.Connection[Any], channel: str, listener: Listener
) -> None:
    for i in range(5):
        publish(conn, channel, f"event {i}", **raw(publish))
    assert [listener.event()[0] for _ in range(5)] == [f"event {i}" for i in range(5)]


def test_own_id_without_the_log_is_a_plain_event(dsn: str, channel: str) -> None:
    """Left to decide (``durable=None``) on a database without the sserelay schema, an
    event with an id of the caller's is a plain NOTIFY carrying it. (With the schema it is
    refused: test_durable_publish.py.)"""
    with temporary_database(dsn) as bare:
        listener = Listener(bare, channel)
        try:
            assert publish(bare, channel, "mine", id=42, retry=5000) is None
            assert listener.event() == ("mine", None, "42", 5000)
        finally:
            listener.close()


async def test_apublish_with_a_dsn(dsn: str, channel: str, listener: Listener) -> None:
    await apublish(dsn, channel, "async", event="e", id=1, **raw(apublish))
    assert listener.event() == ("async", "e", "1", None)


async def test_apublish_with_a_connection(dsn: str, channel: str, listener: Listener) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        await apublish(aconn, channel, ["a", 1], **raw(apublish))
    assert listener.event() == ('["a",1]', None, None, None)


# -- transactions --------------------------------------------------------------------


def test_sent_on_commit(conn: psycopg.Connection[Any], channel: str, listener: Listener) -> None:
    with conn.transaction():
        publish(conn, channel, "committed", **raw(publish))
        assert listener.until_marker() == []  # not before the commit
    assert listener.event()[0] == "committed"


def test_not_sent_on_rollback(
    conn: psycopg.Connection[Any], channel: str, listener: Listener
) -> None:
    with conn.transaction(force_rollback=True):
        publish(conn, channel, "rolled back", **raw(publish))
    assert listener.until_marker() == []


def test_not_sent_when_the_transaction_fails(
    conn: psycopg.Connection[Any], channel: str, listener: Listener
) -> None:
    with pytest.raises(ZeroDivisionError), conn.transaction():
        publish(conn, channel, "never", **raw(publish))
        raise ZeroDivisionError
    assert listener.until_marker() == []


def test_implicit_transaction(dsn: str, channel: str, listener: Listener) -> None:
    with psycopg.connect(dsn) as conn:  # not autocommit: a transaction starts implicitly
        publish(conn, channel, "first", **raw(publish))
        assert listener.until_marker() == []
        conn.commit()
        assert listener.event()[0] == "first"
        publish(conn, channel, "second", **raw(publish))
        conn.rollback()
    assert listener.until_marker() == []


async def test_async_commit_and_rollback(dsn: str, channel: str, listener: Listener) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        async with aconn.transaction():
            await apublish(aconn, channel, "committed", **raw(apublish))
            assert listener.until_marker() == []
        async with aconn.transaction(force_rollback=True):
            await apublish(aconn, channel, "rolled back", **raw(apublish))
    assert listener.event()[0] == "committed"
    assert listener.until_marker() == []


# -- size ------------------------------------------------------------------------------


def test_largest_payload_postgres_accepts(dsn: str, channel: str, listener: Listener) -> None:
    envelope = len(json.dumps({"data": ""}, separators=(",", ":")))
    data = "x" * (MAX_PAYLOAD_BYTES - envelope)
    assert len(encode_payload(data).encode()) == MAX_PAYLOAD_BYTES == 7999
    publish(dsn, channel, data, **raw(publish))
    assert listener.event()[0] == data


@pytest.mark.parametrize(
    ("data", "size"),
    [("x" * 7989, 8000), ("é" * 4000, 8011), ("x" * 100_000, 100_011)],
    ids=["one-byte-over", "multibyte", "huge"],
)
def test_payload_too_large(
    conn: psycopg.Connection[Any], channel: str, listener: Listener, data: str, size: int
) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        publish(conn, channel, data, **raw(publish))
    assert (info.value.size, info.value.limit) == (size, 7999)
    assert str(info.value) == (
        f"payload is {size} bytes; PostgreSQL NOTIFY accepts at most 7999 bytes"
    )
    assert listener.until_marker() == []


async def test_apublish_payload_too_large(dsn: str) -> None:
    with pytest.raises(PayloadTooLarge, match="payload is 8000 bytes"):
        await apublish(dsn, "c", "x" * 7989, **raw(apublish))


def test_postgres_agrees_on_the_limit(conn: psycopg.Connection[Any], channel: str) -> None:
    """The limit is PostgreSQL's: one byte more and the server refuses it too."""
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="payload string too long"):
        conn.execute("SELECT pg_notify(%s, %s)", (channel, "x" * (MAX_PAYLOAD_BYTES + 1)))


# -- refused before anything is sent -------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["", "x" * 64, "a\x00b", "a\nb", "\ud800", "sserelay.probe", None, 42]
)
def test_invalid_channel(bad: Any) -> None:
    # Refused before connecting: UNREACHABLE would otherwise raise PublishError.
    with pytest.raises(InvalidChannel):
        publish(UNREACHABLE, bad, "x", **raw(publish))


@pytest.mark.parametrize("bad", ["", "x" * 64, "sserelay.x"])
async def test_apublish_invalid_channel(bad: str) -> None:
    with pytest.raises(InvalidChannel):
        await apublish(UNREACHABLE, bad, "x", **raw(apublish))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": "a\nb"}, "SSE event may not contain a line break"),
        ({"event": "a\rb"}, "SSE event may not contain a line break"),
        ({"id": "a\r\nb"}, "SSE id may not contain a line break"),
        ({"id": "a\x00b"}, "SSE id may not contain NUL"),
        ({"id": True}, "id must be a string or an integer"),
        ({"id": 1.5}, "id must be a string or an integer"),
        ({"event": 5}, "event must be a string"),
        ({"retry": -1}, "SSE retry must be a non-negative integer"),
        ({"retry": True}, "SSE retry must be a non-negative integer"),
        ({"data": object()}, "data is not JSON-serialisable"),
        ({"data": {"x": float("nan")}}, "data is not JSON-serialisable"),
        ({"data": float("inf")}, "data is not JSON-serialisable"),
        ({"data": "lone \ud800"}, "not valid unicode"),
        ({"event": "lone \udc00"}, "not valid unicode"),
    ],
)
def test_invalid_event(
    dsn: str,
    conn: psycopg.Connection[Any],
    channel: str,
    listener: Listener,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    kwargs = {"data": "x", **kwargs}
    for target in (conn, dsn):
        with pytest.raises(InvalidEvent, match=message) as info:
            publish(target, channel, **kwargs, **raw(publish))
        assert isinstance(info.value, SseRelayError)
    assert listener.until_marker() == []


async def test_apublish_invalid_event(dsn: str, channel: str, listener: Listener) -> None:
    with pytest.raises(InvalidEvent):
        await apublish(dsn, channel, "x", id="a\nb", **raw(apublish))
    assert listener.until_marker() == []


# -- anything arrives intact -----------------------------------------------------------

TRICKY = [
    "plain",
    "Mixed Case",
    "'; DROP TABLE publish_canary; --",
    'Robert"); DROP TABLE publish_canary;--',
    "it's",
    'say "hi"',
    "back\\slash \\' \\\"",
    "$$dollar$$ $tag$",
    "%s %(name)s {0} {}",
    "snowman ☃ and 😀",
    "تحيات",
    "spaces  inside ",
]


@pytest.fixture(scope="module")
def canary(dsn: str) -> Iterator[str]:
    """A table that SQL injection through a channel name or data would drop."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS publish_canary (id int)")
        yield "publish_canary"
        conn.execute("DROP TABLE IF EXISTS publish_canary")


@pytest.mark.parametrize("name", TRICKY)
def test_channel_names_arrive_intact(dsn: str, canary: str, name: str) -> None:
    listener = Listener(dsn, name)
    try:
        publish(dsn, name, "x", **raw(publish))
        notify = listener.next()
        assert (notify.channel, event_from_notification(notify.channel, notify.payload).data) == (
            name,
            "x",
        )
    finally:
        listener.close()
    _assert_table_exists(dsn, canary)


@pytest.mark.parametrize(
    "data",
    [
        *TRICKY,
        "",
        "line 1\nline 2\r\nline 3\rline 4\n",
        "\n\ndata: injected\nevent: evil\n\n",
        '{"event": "evil", "data": "not an envelope, a string"}',
        "nul \x00 inside",
        "\u2028\x85\ufeff",
    ],
)
def test_data_arrives_intact(
    dsn: str, canary: str, channel: str, listener: Listener, data: str
) -> None:
    publish(dsn, channel, data, event=data.replace("\n", " ").replace("\r", " "), **raw(publish))
    got_data, got_event, _, _ = listener.event()
    assert got_data == data
    assert got_event == data.replace("\n", " ").replace("\r", " ")
    _assert_table_exists(dsn, canary)


def test_nul_in_data_and_event_name(channel: str, dsn: str, listener: Listener) -> None:
    # JSON escapes NUL (\u0000), so what PostgreSQL cannot carry in text still arrives.
    publish(dsn, channel, "a\x00b", event="e\x00", **raw(publish))
    assert listener.event() == ("a\x00b", "e\x00", None, None)


def _assert_table_exists(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    assert row is not None and row[0] == table


# -- database errors -------------------------------------------------------------------


def test_unreachable_database() -> None:
    with pytest.raises(PublishError, match="publishing on 'c' failed") as info:
        publish(UNREACHABLE, "c", "x", **raw(publish))
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


async def test_apublish_unreachable_database() -> None:
    with pytest.raises(PublishError, match="publishing on 'c' failed"):
        await apublish(UNREACHABLE, "c", "x", **raw(apublish))


def test_failed_transaction(conn: psycopg.Connection[Any], channel: str) -> None:
    with conn.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(PublishError) as info:
            publish(conn, channel, "x", **raw(publish))
        assert isinstance(info.value.__cause__, psycopg.errors.InFailedSqlTransaction)


def test_closed_connection(dsn: str) -> None:
    conn = psycopg.connect(dsn)
    conn.close()
    with pytest.raises(PublishError):
        publish(conn, "c", "x", **raw(publish))
