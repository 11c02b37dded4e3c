"""The embedded PostgreSQL runs with ``wal_level = logical``, so capture works in the
one-command quick start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sserelay.bus.postgres.capture import rules
from sserelay.bus.postgres.capture import slot as capture_slot
from sserelay.bus.postgres.embedded import start_embedded

pytestmark = pytest.mark.integration


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A directory outside pytest's own: as root, the embedded server runs as the user
    ``pgserver``, who must traverse the path, and a pytest starting meanwhile (another
    engineer's, on a shared machine) makes /tmp/pytest-of-root private again."""
    root = Path(tempfile.mkdtemp(prefix="sserelay-embedded-"))
    try:
        yield root / "pgdata"
    finally:
        if (root / "pgdata").exists():
            import pgserver

            # Stopped now (not at exit, as sserelay leaves it): its directory goes next.
            pgserver.get_server(root / "pgdata").cleanup()  # type: ignore[attr-defined]  # untyped
        shutil.rmtree(root, ignore_errors=True)


def test_embedded_postgres_can_capture(data_dir: Path) -> None:
    dsn = start_embedded(data_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE lobby_message (id serial PRIMARY KEY, text text)")
        slot = capture_slot.install(conn)
        rule = rules.add(conn, "lobby_message", "lobby")
        assert slot == "sserelay_postgres" and rule.publication == "sserelay_capture_iudt"
        capture_slot.uninstall(conn)
    # Attaching again (as a second sserelay command does) keeps it so, with no restart.
    assert start_embedded(data_dir) == dsn
