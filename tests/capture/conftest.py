"""Capture tests run on a private PostgreSQL with ``wal_level = logical`` (the machine's
server is not reconfigured for them): one cluster for the session, a database (with its
own slot) per test. Tests that crash or tune the server start a cluster of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgcluster import Cluster, private_cluster
from sserelay.capture import CaptureOptions, Capturer
from sserelay.capture import slot as capture_slot
from sserelay.testing import wait_until

#: Fast timers, so that failover and heartbeats happen within a test's patience.
FAST = {
    "heartbeat_interval": 0.5,
    "standby_interval": 0.2,
    "takeover_timeout": 2.0,
    "reconnect_min": 0.05,
    "reconnect_max": 0.5,
    "status_interval": 1.0,
}


@pytest.fixture(scope="session")
def capture_cluster() -> Iterator[Cluster]:
    with private_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def capture_database(admin_dsn: str, *, install: bool = True) -> Iterator[str]:
    """A fresh database on ``admin_dsn``'s server, with capture installed (its own slot);
    on exit the slot and the database are dropped."""
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


@pytest.fixture
def capture_dsn(capture_cluster: Cluster) -> Iterator[str]:
    with capture_database(capture_cluster.dsn()) as db:
        yield db


@contextlib.asynccontextmanager
async def running_capturer(
    dsn: str, *, ready: Callable[[Capturer], bool] | None = None, **options: Any
) -> AsyncIterator[Capturer]:
    """A capturer in this process, yielded once ``ready`` (default: streaming); stopped
    on exit."""
    capturer = Capturer(dsn, CaptureOptions(**{**FAST, **options}))
    is_ready = ready or (lambda c: c.streaming)
    task = asyncio.create_task(capturer.run())
    try:
        await wait_until(
            lambda: is_ready(capturer) or task.done(),
            timeout=30,
            message=lambda: f"capturer is {capturer.role}: {capturer.error}",
        )
        yield capturer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def psql(dsn: str, command: str) -> str:
    """Run SQL with the real ``psql`` (as a user would), returning its output."""
    done = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", dsn, "-c", command],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def execute(dsn: str, *statements: str, params: tuple[Any, ...] | None = None) -> None:
    """Each statement in a transaction of its own (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)  # type: ignore[arg-type]  # test SQL
