"""``sserelay.capture_write`` (one statement per batch) logs and notifies exactly what
calling ``sserelay.publish`` for each event in turn would: the same ids, rows and
notification payloads, in the same order. This guards the copy of publish's payload
format in 0004_capture.sql against drifting from publish itself, including the channel
it notifies (the durable name, ``sserelay.notify_channel``, since schema version 3)."""

from __future__ import annotations

import json

import psycopg
import pytest

from sserelay.bus.postgres.statements import durable_channel
from sserelay.testing import temporary_database

pytestmark = pytest.mark.integration

EVENTS = [
    ("a", "t.insert", '{"new":{"id":1}}'),
    ("b", "t.insert", 'line\nbreak "quoted" \\ back\tslash é ☃'),
    ("a", None, "no event name"),
    ("a", "t.update", "x" * 7990),  # the payload passes 8000 bytes: large
    ("b", "t.delete", "y" * 9000),  # the data alone passes 8000 bytes: large
    ("c", "t.insert", ""),
    ("a", "t.insert", "z" * 7900),
]


def run(conn: psycopg.Connection, channels: dict[str, str], bulk: bool) -> list[tuple[str, str]]:
    """Publish EVENTS (channel names mapped) in one transaction; the notifications got,
    on each channel's own name and its durable one (as a relay LISTENs)."""
    listener = psycopg.connect(conn.info.dsn, autocommit=True)
    try:
        for channel in channels.values():
            for name in (channel, durable_channel(channel)):
                listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(name)))
        with conn.transaction():
            conn.execute("SELECT sserelay.publish(%s, 'before', NULL)", (channels["a"],))
        with conn.transaction():
            if bulk:
                batch = [[channels[c], e, d] for c, e, d in EVENTS]
                conn.execute("SELECT sserelay.capture_write(%s::json)", (json.dumps(batch),))
            else:
                for c, e, d in EVENTS:
                    conn.execute("SELECT sserelay.publish(%s, %s, %s)", (channels[c], d, e))
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=8)]
    finally:
        listener.close()
    return [(c, p) for c, p in got if '"data":"before"' not in p]


def rows(conn: psycopg.Connection, channels: dict[str, str]) -> list[tuple[object, ...]]:
    back = {v: k for k, v in channels.items()}
    found = conn.execute(
        "SELECT channel, id, event, data FROM sserelay.events ORDER BY channel, id"
    ).fetchall()
    return sorted((back[r[0]], *r[1:]) for r in found)


def test_capture_write_is_publish_in_a_batch(dsn: str) -> None:
    with (
        temporary_database(dsn, migrate=True) as one,
        temporary_database(dsn, migrate=True) as two,
        psycopg.connect(one, autocommit=True) as a,
        psycopg.connect(two, autocommit=True) as b,
    ):
        names = {c: f"ch-{c}" for c in "abc"}
        by_publish = run(a, names, bulk=False)
        by_batch = run(b, names, bulk=True)
        assert by_batch == by_publish
        assert len(by_batch) == len(EVENTS)
        durable_names = {durable_channel(name) for name in names.values()}
        assert {channel for channel, _ in by_batch} <= durable_names
        assert sum('"large":true' in p for _, p in by_batch) == 2
        assert rows(b, names) == rows(a, names)
        channels = "SELECT channel, last_id FROM sserelay.channels ORDER BY channel"
        assert b.execute(channels).fetchall() == a.execute(channels).fetchall()


def test_capture_write_refuses_a_bad_channel(dsn: str) -> None:
    with (
        temporary_database(dsn, migrate=True) as db,
        psycopg.connect(db) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved"),
    ):
        conn.execute("SELECT sserelay.capture_write(%s::json)", ('[["sserelay.x", "e", "d"]]',))


async def test_a_second_writer_logs_nothing(capture_dsn: str) -> None:
    """The compare-and-set: a writer whose view of capture_state is stale rolls back."""
    from sserelay.bus.postgres.capture.changes import CapturedEvent
    from sserelay.bus.postgres.capture.errors import Conflict
    from sserelay.bus.postgres.capture.writer import Group, LogWriter

    first = await LogWriter.connect(capture_dsn, application_name="one")
    second = await LogWriter.connect(capture_dsn, application_name="two")
    try:
        await first.load_state()
        await second.load_state()
        for writer, lsn, name in ((first, 100, "one"), (second, 200, "two")):
            group = Group(transactions=1, captured=1, commit_lsn=lsn, end_lsn=lsn + 8)
            group.add(CapturedEvent("ch", "t.insert", f"from {name}"))
            if writer is first:
                await writer.commit(group, None)
            else:
                with pytest.raises(Conflict):
                    await writer.commit(group, None)
        assert (first.commit_lsn, second.commit_lsn) == (100, 0)
    finally:
        await first.close()
        await second.close()
    with psycopg.connect(capture_dsn) as conn:
        assert conn.execute("SELECT data FROM sserelay.events").fetchall() == [("from one",)]
        state = conn.execute("SELECT commit_lsn::text, events FROM sserelay.capture_state")
        assert state.fetchone() == ("0/64", 1)
