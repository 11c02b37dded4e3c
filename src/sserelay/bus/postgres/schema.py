"""The ``sserelay`` schema in PostgreSQL: migrations, version, uninstall, trigger SQL.

Durable channels live in the ``sserelay`` schema (see ``docs/durable.md``). Its SQL
ships as numbered files in ``sserelay/bus/postgres/sql/`` (``0001_initial.sql``, ...).
:func:`migrate` applies the ones a database lacks, in order, in one transaction, under an advisory
lock, and records each in ``sserelay.schema_version``: running it twice is a no-op and
concurrent runs are safe.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ...errors import ConfigError, InvalidEvent, SseRelayError
from ...wire.channels import validate_channel

SCHEMA = "sserelay"
#: Held (transaction-level) while migrating or uninstalling: int8 of the bytes b"sserelay".
MIGRATE_LOCK_KEY = int.from_bytes(b"sserelay", "big")
#: Held (transaction-level) by ``sserelay.prune()``: int8 of b"sseprune" (see 0002).
PRUNE_LOCK_KEY = int.from_bytes(b"sseprune", "big")
#: The signature whose presence means "durable publishing is available".
PUBLISH_FUNCTION = "sserelay.publish(text,text,text)"

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_OPERATIONS = ("INSERT", "UPDATE", "DELETE")
_OPERATION_SQL = {
    "INSERT": sql.SQL("INSERT"),
    "UPDATE": sql.SQL("UPDATE"),
    "DELETE": sql.SQL("DELETE"),
}
_MAX_NAME_BYTES = 63

Connectable = str | psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file."""

    version: int
    name: str
    sql: bytes


def migrations() -> list[Migration]:
    """Every migration shipped with this package, in version order."""
    found = []
    for entry in resources.files("sserelay.bus.postgres").joinpath("sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_bytes()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise SseRelayError(f"migration files are not numbered 1..n: {[m.version for m in found]}")
    return found


def latest_version() -> int:
    """The version :func:`migrate` brings a database to."""
    return migrations()[-1].version


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version installed in ``conn``'s database, or None if there is none."""
    row = conn.execute("SELECT to_regclass('sserelay.schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM sserelay.schema_version").fetchone()
    return None if row is None else row[0]


def migrate(conn: Connectable, *, target: int | None = None) -> int:
    """Bring the schema to ``target`` (default: the latest) and return the version reached.

    ``conn`` is a DSN or a psycopg connection; the work is one transaction (a savepoint
    if ``conn`` is already in one). Never downgrades: a database ahead of ``target`` is
    left alone and its version returned.
    """
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as own:
            return migrate(own, target=target)
    todo = migrations()
    if target is not None:
        if not 1 <= target <= len(todo):
            raise ConfigError(f"no schema version {target}: versions are 1..{len(todo)}")
        todo = todo[:target]
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
        current = installed_version(conn) or 0
        for migration in todo:
            if migration.version <= current:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO sserelay.schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            current = migration.version
    return current


def uninstall(conn: Connectable) -> None:
    """Drop the ``sserelay`` schema: the log, its functions, and every trigger installed
    with :func:`trigger_sql` (their functions live in the schema, so they go too)."""
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as own:
            uninstall(own)
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
        conn.execute("DROP SCHEMA IF EXISTS sserelay CASCADE")


# -- triggers ------------------------------------------------------------------------


def _split_table(table: str) -> tuple[str | None, str]:
    """``"name"`` or ``"schema.name"`` (split at the first dot); names are used as given."""
    if not isinstance(table, str) or not table:
        raise ConfigError("table must be a non-empty name, optionally schema-qualified")
    schema, dot, name = table.partition(".")
    if not dot:
        return None, table
    if not schema or not name:
        raise ConfigError(f"table {table!r} is not 'name' or 'schema.name'")
    return schema, name


def _trigger_name(schema: str | None, table: str, channel: str) -> str:
    """One name, used for both the trigger and its function: readable, unique per
    (table, channel) thanks to a hash suffix, and within PostgreSQL's 63 bytes."""
    digest = hashlib.sha1(f"{schema}\0{table}\0{channel}".encode()).hexdigest()[:8]
    stem = f"publish_{table}_{channel}".encode()[: _MAX_NAME_BYTES - len(digest) - 1]
    return f"{stem.decode('utf-8', 'ignore')}_{digest}"


def _table_ident(schema: str | None, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def _operations(operations: Iterable[str]) -> list[str]:
    ops = [op.upper() for op in ([operations] if isinstance(operations, str) else operations)]
    if not ops or not set(ops) <= set(_OPERATIONS) or len(set(ops)) != len(ops):
        raise ConfigError(f"operations must be distinct values of {_OPERATIONS}, not {ops}")
    return ops


def _row_json(
    columns: Iterable[str] | None, table: sql.Identifier
) -> tuple[sql.Composable, sql.Composable]:
    """The trigger's expression for ``rec`` as JSON text, and a statement that fails at
    install time (rather than on every write) if a column does not exist."""
    if columns is None:
        return sql.SQL("row_to_json(rec)::text"), sql.SQL("")
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise ConfigError("columns must name at least one column (or be None for all)")
    # A subselect names its output columns after rec's fields: no argument-count limit.
    fields = sql.SQL(", ").join(sql.SQL("rec.{0} AS {0}").format(sql.Identifier(c)) for c in cols)
    check = sql.SQL("SELECT {} FROM {} WHERE false;\n").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in cols), table
    )
    return sql.SQL("(SELECT row_to_json(r)::text FROM (SELECT {}) AS r)").format(fields), check


def trigger_sql(
    table: str,
    channel: str,
    *,
    columns: Iterable[str] | None = None,
    operations: Iterable[str] = _OPERATIONS,
    event_prefix: str | None = None,
) -> str:
    """SQL that makes row changes on ``table`` publish on the durable ``channel``.

    Each changed row is published with ``sserelay.publish`` as ``row_to_json`` of the
    new row (the old one for DELETE), restricted to ``columns`` if given, with the event
    name ``<event_prefix>.insert`` / ``.update`` / ``.delete`` (the prefix defaults to
    the table name without its schema). ``table`` may be ``schema.table``; names are
    quoted, so they must be spelled as PostgreSQL stores them (usually lower case).

    The result (``CREATE OR REPLACE FUNCTION`` in the ``sserelay`` schema, then ``DROP
    TRIGGER IF EXISTS`` and ``CREATE TRIGGER``) can be run again to change the trigger;
    run it as the owner of the schema and the table, in one transaction.
    """
    schema, name = _split_table(table)
    channel = validate_channel(channel)
    ops = _operations(operations)
    prefix = name if event_prefix is None else event_prefix
    if "\r" in prefix or "\n" in prefix:
        raise InvalidEvent("an SSE event name may not contain a line break")
    table_ident = _table_ident(schema, name)
    row_json, check = _row_json(columns, table_ident)
    body = sql.SQL(
        "DECLARE\n"
        "    rec record;\n"
        "BEGIN\n"
        "    IF TG_OP = 'DELETE' THEN rec := OLD; ELSE rec := NEW; END IF;\n"
        "    PERFORM sserelay.publish({channel}, {row_json}, {prefix} || '.' || lower(TG_OP));\n"
        "    RETURN NULL;\n"
        "END\n"
    ).format(channel=sql.Literal(channel), row_json=row_json, prefix=sql.Literal(prefix))
    obj = _trigger_name(schema, name, channel)
    statement = sql.SQL(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {body};\n"
        "DROP TRIGGER IF EXISTS {trigger} ON {table};\n"
        "CREATE TRIGGER {trigger} AFTER {ops} ON {table}\n"
        "    FOR EACH ROW EXECUTE FUNCTION {function}();\n"
    ).format(
        function=sql.Identifier(SCHEMA, obj),
        # The body as a string literal rather than $$-quoted: no name can end the quote.
        body=sql.Literal(body.as_string(None)),
        trigger=sql.Identifier(obj),
        ops=sql.SQL(" OR ").join(_OPERATION_SQL[op] for op in ops),
        table=table_ident,
    )
    return (check + statement).as_string(None)


def drop_trigger_sql(table: str, channel: str) -> str:
    """SQL that removes what :func:`trigger_sql` for ``(table, channel)`` installed."""
    schema, name = _split_table(table)
    obj = _trigger_name(schema, name, validate_channel(channel))
    statement = sql.SQL(
        "DROP TRIGGER IF EXISTS {trigger} ON {table};\nDROP FUNCTION IF EXISTS {function}();\n"
    ).format(
        trigger=sql.Identifier(obj),
        table=_table_ident(schema, name),
        function=sql.Identifier(SCHEMA, obj),
    )
    return statement.as_string(None)
