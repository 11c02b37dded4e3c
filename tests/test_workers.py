"""``sserelay serve --workers 2``: one port, two processes, one LISTEN connection each.

The relay runs as a real subprocess against a database of its own, so that
``pg_stat_activity`` shows its listener connections and nobody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sserelay import mint_token
from sserelay.testing import SseClient, notify, raw_request
from test_cli import started

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def own_db(dsn: str) -> Iterator[str]:
    """A fresh database on the test server; its DSN."""
    name = f"sserelay_workers_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def listener_connections(dsn: str) -> int:
    """The relay's LISTEN connections to the database of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'sserelay-listener' AND datname = %s",
            (conninfo_to_dict(dsn)["dbname"],),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` against a deadline (for state that announces nothing)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)  # polling interval, not synchronisation


#: A key for the relay, so that /healthz gives its details (pid, streams) to an admin token.
SECRET = "workers-test-secret-0123456789abcdef"
ADMIN = mint_token(SECRET, admin=True, ttl=600)


async def health(port: int) -> dict[str, object]:
    request = f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    response = await raw_request("127.0.0.1", port, request.encode())
    assert response.status == 200, response.raw
    body = response.json()
    assert isinstance(body, dict)
    return body


async def test_two_workers(own_db: str) -> None:
    channel = "workers"
    args = ["serve", "--workers", "2", "--port", "0", "--dsn", own_db, "--public-channel", channel]
    with started(args, SSERELAY_JWT_SECRET=SECRET) as serve:
        port = int(serve.expect(r"^sserelay: 2 workers on port (\d+)$").group(1))
        for _ in range(2):
            serve.expect(rf"serving on http://127\.0\.0\.1:{port} ")

        # Exactly one LISTEN connection per worker. Both have announced they serve, but a
        # listener connects in the background: poll the database with a deadline.
        await wait_for(lambda: listener_connections(own_db) == 2, "2 listener connections")

        # Open streams until both workers hold some: the kernel picks the worker for each
        # connection, so keep going (bounded) until /healthz shows streams on two pids.
        clients: list[SseClient] = []
        streams: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 30
            while len([n for n in streams.values() if n]) < 2:
                assert time.monotonic() < deadline, f"streams per worker pid: {streams}"
                batch = await asyncio.gather(
                    *(SseClient.open("127.0.0.1", port, f"/events/{channel}") for _ in range(4))
                )
                clients += batch
                await asyncio.gather(*(c.wait_ready() for c in batch))
                for _ in range(20):  # ask both workers (each request lands on either)
                    body = await health(port)
                    streams[int(str(body["pid"]))] = int(str(body["streams"]))
            assert len(streams) == 2 and sum(streams.values()) == len(clients), streams

            # One NOTIFY reaches every stream on both workers.
            await notify(own_db, channel, json.dumps({"event": "e", "data": "to everyone"}))
            events = await asyncio.gather(*(c.next_event() for c in clients))
            assert {(e.event, e.data) for e in events} == {("e", "to everyone")}
            assert listener_connections(own_db) == 2

            # SIGTERM: the parent passes it on; the workers end their streams and exit.
            started_at = time.monotonic()
            assert serve.stop(signal.SIGTERM, timeout=15) == 0, serve.transcript()
            assert time.monotonic() - started_at < 15
            with pytest.raises(ProcessLookupError):  # no worker is left in the process group
                os.killpg(serve.pid, 0)
            for client in clients:
                await client.wait_closed(timeout=5)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    assert "Traceback" not in serve.transcript(), serve.transcript()
    assert not re.search(r"worker \d+ .* exited", serve.transcript()), serve.transcript()
    await wait_for(lambda: listener_connections(own_db) == 0, "the listeners to disconnect")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


async def test_workers_exit_when_their_supervisor_is_killed(own_db: str) -> None:
    """SIGKILL the supervisor: its workers notice (the kernel tells them) and exit, so
    no orphan keeps serving unsupervised or holds the port."""
    with started(["serve", "--workers", "2", "--port", "0", "--dsn", own_db]) as serve:
        port = int(serve.expect(r"^sserelay: 2 workers on port (\d+)$").group(1))
        for _ in range(2):
            serve.expect(rf"serving on http://127\.0\.0\.1:{port} ")
        workers = children(serve.pid)
        assert len(workers) == 2, workers
        os.kill(serve.pid, signal.SIGKILL)
        await wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to exit")
    with started(["serve", "--port", str(port), "--dsn", own_db]) as again:
        again.expect(rf"serving on http://127\.0\.0\.1:{port} ")
        assert again.stop() == 0, again.transcript()


def _alive(pid: int) -> bool:
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
