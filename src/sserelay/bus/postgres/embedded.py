"""The embedded PostgreSQL: a real server from the ``pgserver`` wheel, for zero setup.

Used when no DSN is configured. Its data directory is ``$SSERELAY_DATA_DIR`` or
``--data-dir`` if set, else ``~/.local/share/sserelay/pgdata`` (the platform's
user data directory). The server listens on a Unix socket inside that
directory; several sserelay commands share it, and it stops when the last one
exits. It runs with ``wal_level = logical``, so change data capture works in it
(see :func:`_ensure_logical`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ...errors import ConfigError

log = logging.getLogger("sserelay.embedded")


def default_data_dir() -> Path:
    env = os.environ.get("SSERELAY_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sserelay" / "pgdata"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or attach to) the embedded server; return its DSN."""
    path = (data_dir or default_data_dir()).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # pgserver asks platformdirs for a runtime dir when it is imported, which warns when
    # XDG_RUNTIME_DIR is unset (as under cron, CI, containers): give it one first.
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or path.parent / "run")
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    try:
        import pgserver
    except ImportError:
        raise ConfigError(
            "no database configured (set DATABASE_URL or pass --dsn), and the embedded "
            "PostgreSQL is not installed: pip install 'sserelay[embedded]'"
        ) from None
    running = (path / "postmaster.pid").exists()
    log.info("%s the embedded PostgreSQL in %s", "using" if running else "starting", path)
    # pgserver narrates every command it runs at INFO; keep that for DEBUG.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("pgserver").setLevel(logging.WARNING)
    fresh = not (path / "PG_VERSION").exists()
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]  # untyped package
    if not _ensure_logical(str(server.get_uri())):
        return str(server.get_uri())
    if fresh:  # made just now, by us: restart it with the setting
        server.cleanup()
        server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]  # untyped package
    else:
        log.warning(
            "the embedded PostgreSQL now has wal_level = logical (for change data capture); "
            "it takes effect when it restarts, once no sserelay command uses it"
        )
    return str(server.get_uri())


def dsn_or_embedded(dsn: str | None, data_dir: Path | None, *, announce: bool) -> str:
    """``dsn`` if given, else the embedded server's (started if it is not running).
    ``announce`` prints, for the person at the terminal, how to reach it."""
    if dsn:
        return dsn
    dsn = start_embedded(data_dir)
    if announce:
        print(
            f"sserelay: no DATABASE_URL or --dsn; using the embedded PostgreSQL.\n"
            f"sserelay: publish to it with:  psql '{dsn}'",
            flush=True,
        )
    return dsn


def _ensure_logical(dsn: str) -> bool:
    """Set ``wal_level = logical`` if it is not; True if a restart is needed for it."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('wal_level')").fetchone()
        if row is not None and row[0] == "logical":
            return False
        conn.execute("ALTER SYSTEM SET wal_level = logical")
    return True
