"""Record the pgoutput messages of a known set of changes, as hex, for the decoder's tests.

    python tests/capture/record_pgoutput.py DSN > tests/capture/pgoutput_messages.txt

DSN: a PostgreSQL 15+ server with wal_level = logical, where a database ``pgoutput_rec``
may be made (and is dropped again). Each output line is ``label hex``; the labels say
which change produced the message (test_capture_pgoutput.py reads them).
"""

from __future__ import annotations

import asyncio
import sys

import psycopg
from psycopg.conninfo import make_conninfo

from sserelay.bus.postgres.capture.stream import ReplicationStream, XLogData

CHANGES = [
    ("insert", "INSERT INTO t VALUES (1, 'héllo', 'happy', repeat('x', 3000), 1.50, true)"),
    ("update_toast_unchanged", "UPDATE t SET name = 'b' WHERE id = 1"),
    ("update_key_changed", "UPDATE t SET id = 2 WHERE id = 1"),
    ("insert_full", "INSERT INTO f VALUES (1, 'a')"),
    ("update_full", "UPDATE f SET v = NULL"),
    ("delete_full", "DELETE FROM f"),
    ("delete_key", "DELETE FROM t"),
    ("truncate", "TRUNCATE t, f"),
    ("message", "SELECT pg_logical_emit_message(true, 'pfx', 'content')"),
]


async def record(dsn: str) -> list[tuple[str, bytes]]:
    db = make_conninfo(dsn, dbname="pgoutput_rec")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS pgoutput_rec WITH (FORCE)")
        admin.execute("CREATE DATABASE pgoutput_rec")
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
            conn.execute(
                "CREATE TABLE t (id int PRIMARY KEY, name text, m mood, big text, n numeric,"
                " ok bool); ALTER TABLE t ALTER big SET STORAGE EXTERNAL"
            )
            conn.execute("CREATE TABLE f (id int PRIMARY KEY, v text)")
            conn.execute("ALTER TABLE f REPLICA IDENTITY FULL")
            conn.execute("CREATE PUBLICATION p FOR TABLE t, f")
            conn.execute("SELECT pg_create_logical_replication_slot('pgoutput_rec', 'pgoutput')")
            for _, statement in CHANGES:
                conn.execute(statement)
        stream = await ReplicationStream.open(db, "pgoutput_rec", ["p"])
        out: list[tuple[str, bytes]] = []
        changes = iter(CHANGES)
        label = ""
        try:
            while (message := await stream.read(3)) is not None:
                if not isinstance(message, XLogData):
                    continue
                kind = message.payload[:1]
                if kind == b"B":
                    label = next(changes)[0]
                out.append((f"{label}:{kind.decode()}", message.payload))
        finally:
            await stream.close()
        return out
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_drop_replication_slot('pgoutput_rec')")
            admin.execute("DROP DATABASE pgoutput_rec WITH (FORCE)")


def main() -> None:
    for label, payload in asyncio.run(record(sys.argv[1])):
        print(label, payload.hex())


if __name__ == "__main__":
    main()
