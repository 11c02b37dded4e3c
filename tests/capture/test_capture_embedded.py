"""The embedded PostgreSQL runs with ``wal_level = logical``, so capture works in the
one-command quick start."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from sserelay.bus.postgres.capture import rules
from sserelay.bus.postgres.capture import slot as capture_slot
from sserelay.bus.postgres.embedded import start_embedded

pytestmark = pytest.mark.integration


def test_embedded_postgres_can_capture(tmp_path: Path) -> None:
    dsn = start_embedded(tmp_path / "pgdata")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE lobby_message (id serial PRIMARY KEY, text text)")
        slot = capture_slot.install(conn)
        rule = rules.add(conn, "lobby_message", "lobby")
        assert slot == "sserelay_postgres" and rule.publication == "sserelay_capture_iudt"
        capture_slot.uninstall(conn)
    # Attaching again (as a second sserelay command does) keeps it so, with no restart.
    assert start_embedded(tmp_path / "pgdata") == dsn
