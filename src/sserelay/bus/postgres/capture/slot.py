"""Installing capture in a database: the publications, the replication slot, the state row;
and taking it out again, or replacing a lost slot.

Order matters: the publications exist before the slot, so that every change the slot
will ever decode is decoded with them in the catalog.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
from psycopg import sql

from ....errors import ConfigError
from .. import schema
from .changes import missed_event
from .rules import CONTROL_PUBLICATION, PUBLICATIONS, RULES_TABLE, Rule, load_rules
from .stream import SLOT_NAME
from .writer import CHANNELS_SQL, PUBLISH_SQL

#: int8 of the bytes b"ssecaptr": the advisory lock the consuming capturer holds.
CAPTURE_LOCK_KEY = int.from_bytes(b"ssecaptr", "big")
MIN_SERVER_VERSION = 150000


def default_slot_name(database: str) -> str:
    """``sserelay_<database>``: slot names are per cluster, so the database is in it."""
    cleaned = re.sub(r"[^a-z0-9_]", "_", database.lower())[:50]
    return f"sserelay_{cleaned}"


def check_server(conn: psycopg.Connection[Any]) -> None:
    """Refuse a server that cannot capture, saying what to change."""
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise ConfigError(
            f"change data capture needs PostgreSQL 15 or later (row filters and column "
            f"lists); this server is {conn.info.server_version // 10000}"
        )
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    level = row[0] if row else "?"
    if level != "logical":
        raise ConfigError(
            f"change data capture needs wal_level = logical (this server has {level}): set it "
            "in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        )


def _slot_row(conn: psycopg.Connection[Any], slot: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT database, plugin, active_pid, wal_status FROM pg_catalog.pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    ).fetchone()


def configured_slot(conn: psycopg.Connection[Any]) -> str | None:
    """The slot of this database's capture, or None if capture is not installed."""
    if schema.installed_version(conn) is None:
        return None
    if conn.execute("SELECT to_regclass('sserelay.capture_state')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT slot_name FROM sserelay.capture_state").fetchone()
    return None if row is None else str(row[0])


def install(conn: psycopg.Connection[Any], *, slot: str | None = None) -> str:
    """Make capture ready in ``conn``'s database (an autocommit connection): the schema,
    the publications, the state row and the slot. Idempotent; returns the slot name."""
    if not conn.autocommit:
        raise ConfigError("capture install needs an autocommit connection")
    check_server(conn)
    schema.migrate(conn)
    current = configured_slot(conn)
    database = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]  # one row
    name = slot or current or default_slot_name(database)
    if not SLOT_NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a replication slot name: a-z, 0-9 and _, 1-63")
    if current is not None and current != name:
        raise ConfigError(
            f"capture is installed with slot {current!r}: `sserelay capture uninstall` first"
        )
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATE_LOCK_KEY,))
            _create_publications(conn)
            conn.execute(
                "INSERT INTO sserelay.capture_state (slot_name) VALUES (%s)"
                " ON CONFLICT (singleton) DO NOTHING",
                (name,),
            )
    except psycopg.Error as exc:
        raise ConfigError(f"capture install failed: {exc}") from None
    _create_slot(conn, name, database)
    return name


def _create_publications(conn: psycopg.Connection[Any]) -> None:
    existing = {
        r[0]
        for r in conn.execute(
            "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname = ANY(%s)",
            (list(PUBLICATIONS),),
        )
    }
    for name, ops in PUBLICATIONS.items():
        if name in existing:
            continue
        conn.execute(
            sql.SQL(
                "CREATE PUBLICATION {} WITH (publish = {}, publish_via_partition_root = true)"
            ).format(sql.Identifier(name), sql.Literal(", ".join(ops)))
        )
    member = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_publication_tables"
        " WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        (CONTROL_PUBLICATION, *RULES_TABLE),
    ).fetchone()
    if member is None:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(CONTROL_PUBLICATION), sql.Identifier(*RULES_TABLE)
            )
        )


def _create_slot(conn: psycopg.Connection[Any], name: str, database: str) -> None:
    row = _slot_row(conn, name)
    if row is not None:
        if row[0] != database or row[1] != "pgoutput":
            raise ConfigError(
                f"replication slot {name!r} exists for database {row[0]!r} (plugin {row[1]}): "
                "choose another with --slot"
            )
        return
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
    except psycopg.errors.DuplicateObject:
        return  # another install won the race: same name, same database
    except psycopg.Error as exc:
        raise ConfigError(f"cannot create the replication slot {name!r}: {exc}") from None


def drop_slot(conn: psycopg.Connection[Any], name: str, *, timeout: float = 10.0) -> bool:
    """Drop the slot, ending the session consuming it if there is one. False: no slot."""
    deadline = time.monotonic() + timeout
    while True:
        row = _slot_row(conn, name)
        if row is None:
            return False
        if row[2] is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", (row[2],))
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            return True
        except psycopg.errors.UndefinedObject:
            return False
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise ConfigError(f"replication slot {name!r} stays in use; try again") from None
            time.sleep(0.1)  # the terminated session is on its way out


def uninstall(conn: psycopg.Connection[Any]) -> str | None:
    """Drop the slot and the publications, and forget the rules. Returns the slot dropped."""
    name = configured_slot(conn)
    if name is not None:
        drop_slot(conn, name)
    with conn.transaction():
        for pub in PUBLICATIONS:
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(pub)))
        if name is not None:
            conn.execute("DELETE FROM sserelay.capture_rules")
            conn.execute("DELETE FROM sserelay.capture_state")
    return name


def reset_slot(conn: psycopg.Connection[Any]) -> tuple[str, list[str]]:
    """Replace the slot with a new one (after it was lost, or on purpose), and publish
    ``missed`` on every captured channel: what changed while there was no usable slot
    is gone. Returns the slot and the channels told."""
    name = configured_slot(conn)
    if name is None:
        raise ConfigError("capture is not installed in this database")
    database = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]  # one row
    drop_slot(conn, name)
    _create_slot(conn, name, database)
    with conn.transaction():
        told = publish_missed(conn, "capture slot recreated: changes since it was lost are gone")
        conn.execute("UPDATE sserelay.capture_state SET lost_at = NULL, lost_reason = NULL")
    return name, told


def captured_channels(conn: psycopg.Connection[Any], rules: list[Rule]) -> list[str]:
    """The channels the rules publish on: each static one, and each channel in the log
    that a template with fields could have made."""
    channels = {r.channel.text for r in rules if r.channel.is_static}
    for rule in rules:
        if not rule.channel.is_static:
            rows = conn.execute(CHANNELS_SQL, (rule.channel.pattern(),))
            channels.update(r[0] for r in rows)
    return sorted(channels)


def publish_missed(conn: psycopg.Connection[Any], reason: str) -> list[str]:
    """Publish a ``missed`` event on every captured channel (in the caller's transaction)."""
    channels = captured_channels(conn, load_rules(conn))
    for channel in channels:
        missed = missed_event(channel, reason)
        conn.execute(PUBLISH_SQL, (channel, missed.data, missed.event))
    return channels
