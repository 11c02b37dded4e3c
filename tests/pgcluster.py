"""A private PostgreSQL cluster in a temporary directory, for tests that need what the
machine's server must not be changed for: ``wal_level = logical`` (change data capture),
a crash (``pg_ctl stop -m immediate``), a small ``max_slot_wal_keep_size``.

The binaries are Debian's (``/usr/lib/postgresql/15/bin``) if installed, else the ones in
the ``pgserver`` wheel. PostgreSQL refuses to run as root: under root the cluster is run
as the ``postgres`` user (``runuser``), in a directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")

#: Settings every private cluster gets (tests may add more).
BASE_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "max_connections": "100",
    "shared_buffers": "32MB",
    # The tests crash the server with `-m immediate`, which kills PostgreSQL but not the
    # machine: the OS keeps what was written, so fsync buys nothing here but time.
    "fsync": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def find_bindir() -> Path:
    """Where initdb and pg_ctl are."""
    explicit = os.environ.get("SSERELAY_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    if (DEBIAN_BIN / "initdb").exists():
        return DEBIAN_BIN
    import pgserver._commands  # type: ignore[import-untyped]  # untyped package

    return Path(pgserver._commands.POSTGRES_BIN_PATH)


def _server_user() -> pwd.struct_passwd:
    """Who runs the server when we are root: Debian's ``postgres``, or the user the
    pgserver wheel makes for itself (``pgserver``)."""
    for name in ("postgres", "pgserver"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root needs a 'postgres' (or 'pgserver') user to run PostgreSQL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One private server: ``start()``, ``stop(mode)``, ``dsn(dbname)``."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="sserelay-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            entry = _server_user()
            self.user = entry.pw_name
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        conf = {**BASE_SETTINGS, **(settings or {})}
        conf.update(port=str(self.port), listen_addresses="'127.0.0.1'")
        conf["unix_socket_directories"] = f"'{self.root}'"
        lines = [f"{k} = {v}" for k, v in conf.items()]
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write("\n# sserelay tests\n" + "\n".join(lines) + "\n")

    def _run(self, argv: list[str]) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (recovery on the next start)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    """A started private cluster, destroyed on exit."""
    cluster = Cluster(settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@contextlib.contextmanager
def capture_database(admin_dsn: str, *, install: bool = True) -> Iterator[str]:
    """A fresh database on ``admin_dsn``'s server, with change data capture installed (a
    slot of its own); on exit the slot and the database are dropped."""
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from sserelay.bus.postgres.capture import slot as capture_slot

    name = f"cap_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = make_conninfo(admin_dsn, dbname=name)
    try:
        if install:
            with psycopg.connect(db, autocommit=True) as conn:
                capture_slot.install(conn)
        yield db
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for (slot,) in admin.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall():
                capture_slot.drop_slot(admin, slot)
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
