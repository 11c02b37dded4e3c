"""The sserelay schema: migrations (idempotent, concurrent, upgradable), uninstall, triggers.

Every test here works in a database of its own (created and dropped around it), so
installing, upgrading or dropping the schema never touches the shared test database.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sserelay import cli, publish_durable
from sserelay.bus.postgres import schema
from sserelay.bus.postgres.statements import durable_channel
from sserelay.bus.publish import publish
from sserelay.errors import ConfigError, InvalidChannel, InvalidEvent, SchemaMissing
from sserelay.testing import temporary_database

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_db(dsn: str) -> Iterator[str]:
    with temporary_database(dsn) as db:
        yield db


@pytest.fixture(scope="module")
def db(dsn: str) -> Iterator[str]:
    """A migrated database shared by this module's trigger tests."""
    with temporary_database(dsn) as db:
        schema.migrate(db)
        yield db


def channel_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def exists(conn: psycopg.Connection[Any], regproc: str) -> bool:
    row = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (regproc,)).fetchone()
    assert row is not None
    return bool(row[0])


def versions(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT version, name, applied_at FROM sserelay.schema_version ORDER BY version"
    ).fetchall()


# -- migrations ------------------------------------------------------------------------


def test_migration_files_are_numbered_from_one() -> None:
    found = schema.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert schema.latest_version() == len(found) >= 2
    assert found[0].name == "initial"


def test_migrate_twice_is_a_noop(empty_db: str) -> None:
    assert schema.migrate(empty_db) == schema.latest_version()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        before = versions(conn)
        assert [v[0] for v in before] == list(range(1, schema.latest_version() + 1))
        assert schema.migrate(conn) == schema.latest_version()
        assert versions(conn) == before  # same rows, same applied_at: nothing re-ran
        assert schema.installed_version(conn) == schema.latest_version()


def test_concurrent_migrations_are_safe(empty_db: str) -> None:
    start = threading.Barrier(4)
    results: list[int | BaseException] = []

    def run() -> None:
        start.wait(timeout=10)
        try:
            results.append(schema.migrate(empty_db))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [schema.latest_version()] * 4
    with psycopg.connect(empty_db) as conn:
        assert len(versions(conn)) == schema.latest_version()


def test_upgrade_from_version_1_keeps_the_log(empty_db: str) -> None:
    assert schema.migrate(empty_db, target=1) == 1
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert schema.installed_version(conn) == 1
        assert exists(conn, "sserelay.publish(text,text,text)")
        assert not exists(conn, "sserelay.prune(interval,integer)")
        assert publish_durable(conn, "lobby", "before the upgrade") == 1

        assert schema.migrate(conn) == schema.latest_version()
        assert schema.installed_version(conn) == schema.latest_version()
        assert exists(conn, "sserelay.prune(interval,integer)")
        assert publish_durable(conn, "lobby", "after the upgrade") == 2
        rows = conn.execute("SELECT id, data FROM sserelay.events ORDER BY id").fetchall()
        assert rows == [(1, "before the upgrade"), (2, "after the upgrade")]


def test_migrate_never_downgrades(empty_db: str) -> None:
    schema.migrate(empty_db)
    assert schema.migrate(empty_db, target=1) == schema.latest_version()


def test_migrate_rejects_unknown_target(empty_db: str) -> None:
    with pytest.raises(ConfigError, match="no schema version"):
        schema.migrate(empty_db, target=schema.latest_version() + 1)


def test_missing_schema_is_reported_clearly(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert schema.installed_version(conn) is None
        with pytest.raises(SchemaMissing, match="run `sserelay migrate`"):
            publish_durable(conn, "lobby", "hello")
        with pytest.raises(SchemaMissing, match="run `sserelay migrate`"):
            publish(conn, "lobby", "hello", durable=True)
        # The default falls back to a plain NOTIFY where there is no schema.
        conn.execute("LISTEN lobby")
        assert publish(conn, "lobby", "hello") is None
        (note,) = conn.notifies(timeout=5, stop_after=1)
        assert json.loads(note.payload) == {"data": "hello"}


def test_uninstall_removes_schema_and_triggers(empty_db: str) -> None:
    schema.migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute(schema.trigger_sql("items", "items").encode())
        conn.execute("INSERT INTO items VALUES (1)")
        schema.uninstall(conn)
        assert schema.installed_version(conn) is None
        row = conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()
        assert row == (0,)
        conn.execute("INSERT INTO items VALUES (2)")  # writes keep working without the schema
        schema.uninstall(conn)  # and again: nothing to drop, no error
    assert schema.migrate(empty_db) == schema.latest_version()


def test_cli_migrate_prints_the_version(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate", "--dsn", empty_db]) == 0
    assert cli.main(["migrate", "--dsn", empty_db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"sserelay: schema at version {schema.latest_version()}"] * 2


# -- triggers --------------------------------------------------------------------------


@pytest.fixture
def table(db: str) -> Iterator[tuple[str, str]]:
    """A table in a schema of its own, with names that need quoting."""
    namespace = f"Tst {uuid.uuid4().hex[:8]}"
    name = 'Order "Items"'
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(namespace)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text, secret text, {} text)").format(
                sql.Identifier(namespace, name), sql.Identifier("Odd 'col'")
            )
        )
    try:
        yield db, f"{namespace}.{name}"
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(namespace)))


def log(conn: psycopg.Connection[Any], channel: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, event, data FROM sserelay.events WHERE channel = %s ORDER BY id", (channel,)
    ).fetchall()


def write_rows(conn: psycopg.Connection[Any], table: str) -> None:
    namespace, name = table.split(".", 1)
    target = sql.Identifier(namespace, name)
    odd = sql.Identifier("Odd 'col'")
    conn.execute(
        sql.SQL("INSERT INTO {} (id, name, secret, {}) VALUES (1, 'ann', 's3', 'x')").format(
            target, odd
        )
    )
    conn.execute(sql.SQL("UPDATE {} SET name = 'bob' WHERE id = 1").format(target))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(target))


def test_trigger_publishes_row_changes(table: tuple[str, str]) -> None:
    db, name = table
    channel = channel_name()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(schema.trigger_sql(name, channel).encode())
        # Durable events are notified on the channel's durable name (schema version 3).
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(durable_channel(channel))))
        write_rows(conn, name)
        row: dict[str, Any] = {"id": 1, "name": "ann", "secret": "s3", "Odd 'col'": "x"}
        expected = [
            (1, 'Order "Items".insert', row),
            (2, 'Order "Items".update', {**row, "name": "bob"}),
            (3, 'Order "Items".delete', {**row, "name": "bob"}),
        ]
        assert [(i, e, json.loads(d)) for i, e, d in log(conn, channel)] == expected
        notes = [json.loads(n.payload) for n in conn.notifies(timeout=5, stop_after=3)]
        assert [(n["seq"], n["event"], json.loads(n["data"])) for n in notes] == expected

        conn.execute(schema.drop_trigger_sql(name, channel).encode())
        write_rows(conn, name)
        assert len(log(conn, channel)) == 3  # nothing more once dropped
        rows = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'sserelay'::regnamespace"
            " AND prorettype = 'trigger'::regtype"
        ).fetchone()
        assert rows == (0,)


def test_trigger_with_columns_operations_and_prefix(table: tuple[str, str]) -> None:
    db, name = table
    channel = channel_name()
    text = schema.trigger_sql(
        name, channel, columns=["id", "name"], operations=["insert", "DELETE"], event_prefix="o"
    )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(text.encode())
        conn.execute(text.encode())  # installing again replaces it
        write_rows(conn, name)
        assert [(i, e, json.loads(d)) for i, e, d in log(conn, channel)] == [
            (1, "o.insert", {"id": 1, "name": "ann"}),
            (2, "o.delete", {"id": 1, "name": "bob"}),
        ]
        conn.execute(schema.drop_trigger_sql(name, channel).encode())


def test_trigger_with_a_missing_column_fails_to_install(table: tuple[str, str]) -> None:
    db, name = table
    channel = channel_name()
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute(schema.trigger_sql(name, channel, columns=["id", "nope"]).encode())
        write_rows(conn, name)  # rather than failing every write later
        assert log(conn, channel) == []


def test_trigger_in_a_rolled_back_transaction_publishes_nothing(table: tuple[str, str]) -> None:
    db, name = table
    channel = channel_name()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(schema.trigger_sql(name, channel, operations=["INSERT"]).encode())
        with contextlib.suppress(RuntimeError), conn.transaction():
            write_rows(conn, name)
            raise RuntimeError("roll back")
        assert log(conn, channel) == []
        conn.execute(schema.drop_trigger_sql(name, channel).encode())


def test_trigger_names_are_unique_and_fit(db: str) -> None:
    assert schema.drop_trigger_sql("a_b", "c") != schema.drop_trigger_sql("a", "b_c")
    name, channel = "é" * 31, "c" * 63  # 62 and 63 bytes: the longest names there are
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))
        regclass = sql.Identifier(name).as_string(conn)
        triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s)"
        try:
            text = schema.trigger_sql(name, channel)
            conn.execute(text.encode())
            (row,) = conn.execute(triggers, (regclass,)).fetchall()
            assert f'"{row[0]}"' in text  # stored as generated: not truncated
            conn.execute(sql.SQL("INSERT INTO {} VALUES (7)").format(sql.Identifier(name)))
            assert [json.loads(d) for _, _, d in log(conn, channel)] == [{"id": 7}]
            conn.execute(schema.drop_trigger_sql(name, channel).encode())
            assert conn.execute(triggers, (regclass,)).fetchall() == []
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"operations": ["TRUNCATE"]}, ConfigError),
        ({"operations": []}, ConfigError),
        ({"operations": ["INSERT", "insert"]}, ConfigError),
        ({"columns": []}, ConfigError),
        ({"event_prefix": "a\nb"}, InvalidEvent),
    ],
)
def test_trigger_sql_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        schema.trigger_sql("items", "items", **kwargs)


@pytest.mark.parametrize("table", ["", ".items", "public."])
def test_trigger_sql_rejects_bad_table(table: str) -> None:
    with pytest.raises(ConfigError):
        schema.trigger_sql(table, "items")


def test_trigger_sql_rejects_bad_channel() -> None:
    with pytest.raises(InvalidChannel):
        schema.trigger_sql("items", "x" * 64)
