"""Capture when things go wrong: the capturer SIGKILLed while writers commit, PostgreSQL
crashed (``pg_ctl stop -m immediate``), two relays competing for the slot, a slot
invalidated by ``max_slot_wal_keep_size``, a stuck writer. Each test has a PostgreSQL
cluster of its own, since it crashes or tunes the server.

What must hold: every client gets every committed change exactly once, in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from capture_helpers import execute, running_capturer

from pgcluster import Cluster, capture_database, private_cluster
from processes import SETTINGS_VARS, relay_process
from sserelay import mint_token
from sserelay.bus.postgres.capture import rules
from sserelay.bus.postgres.capture import slot as capture_slot
from sserelay.bus.postgres.capture.lsn import parse_lsn
from sserelay.testing import SseClient, raw_request, running_relay, showing_frames, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

HOST = "127.0.0.1"
#: The relays' secret: /healthz shows the capture's detail to an admin token only.
SECRET = "capture-faults-" + "s" * 32


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    with private_cluster({"max_slot_wal_keep_size": "1MB"}) as cluster:
        yield cluster


@pytest.fixture
def db(own_cluster: Cluster) -> Iterator[str]:
    with capture_database(own_cluster.dsn()) as database:
        execute(database, "CREATE TABLE t (id serial PRIMARY KEY, writer int, seq int)")
        with psycopg.connect(database, autocommit=True) as conn:
            rules.add(conn, "t", "t", events=["insert"])
        yield database


@contextlib.asynccontextmanager
async def capturer_process(dsn: str, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``sserelay capture run`` as a child process; killed on exit if still running."""
    env = {k: v for k, v in os.environ.items() if not SETTINGS_VARS.match(k)}
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "sserelay", "capture", "run", "--dsn", dsn),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class Writers:
    """``count`` connections inserting (writer, seq) rows as fast as they can, one row per
    transaction, reconnecting whenever PostgreSQL goes away."""

    def __init__(self, dsn: str, count: int) -> None:
        self.dsn = dsn
        self.committed = 0
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self._write(w)) for w in range(count)]

    async def _write(self, writer: int) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as c:
                    while not self.stop.is_set():
                        seq += 1
                        await c.execute(
                            "INSERT INTO t (writer, seq) VALUES (%s, %s)", (writer, seq)
                        )
                        self.committed += 1
            except psycopg.OperationalError:
                await asyncio.sleep(0.05)  # the server is restarting: a writer retries

    async def until(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` rows past now are committed."""
        target = self.committed + more
        await wait_until(lambda: self.committed >= target, timeout=timeout)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


def table_rows(dsn: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute("SELECT writer, seq FROM t")]  # type: ignore[misc]


class Collector:
    """Reads a client's events in the background, as they come."""

    def __init__(self, client: SseClient) -> None:
        self.client = client
        self.events: list[dict[str, object]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            event = await self.client.next_event(timeout=3600)
            self.events.append({"id": event.id, "name": event.event, **json.loads(event.data)})

    async def until(self, count: int, timeout: float = 90) -> list[dict[str, object]]:
        await wait_until(
            lambda: len(self.events) >= count or self.task.done(),
            timeout=timeout,
            message=lambda: f"{len(self.events)} of {count} events",
        )
        if self.task.done():
            self.task.result()
        return self.events

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


def assert_exactly_once_in_commit_order(
    events: list[dict[str, object]], rows: list[tuple[int, int]]
) -> None:
    got = [(e["new"]["writer"], e["new"]["seq"]) for e in events]  # type: ignore[index]
    assert len(got) == len(set(got)), "a change arrived twice"
    assert sorted(got) == sorted(rows), (
        "a committed change is missing (or one never committed arrived)"
    )
    assert [e["id"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    lsns = [parse_lsn(str(e["lsn"])) for e in events]
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns), "not in commit order"
    for writer in {w for w, _ in got}:
        seqs = [s for w, s in got if w == writer]
        assert seqs == sorted(seqs), f"writer {writer}'s rows out of order"


async def test_capturer_killed_and_postgres_crashed_while_writers_commit(
    own_cluster: Cluster, db: str, tmp_path: Path
) -> None:
    log = tmp_path / "capture.log"
    async with running_relay(db, heartbeat=30.0, reconnect_min=0.05, reconnect_max=0.3) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/t")
        await client.wait_ready()
        collector = Collector(client)
        try:
            with showing_frames(client):
                writers = Writers(db, 3)
                for _ in range(3):  # kill it at whatever point it is
                    async with capturer_process(db, log) as proc:
                        await collector.until(len(collector.events) + 100)
                        proc.send_signal(signal.SIGKILL)
                    await writers.until(100)
                async with capturer_process(db, log):
                    await collector.until(len(collector.events) + 100)
                    await asyncio.to_thread(own_cluster.stop, "immediate")
                    await asyncio.to_thread(own_cluster.start)
                    await writers.until(150)
                    await writers.finish()
                    rows = table_rows(db)
                    assert_exactly_once_in_commit_order(await collector.until(len(rows)), rows)
        finally:
            await collector.close()
    assert "Traceback" not in log.read_text(errors="replace")


async def healthz(port: int) -> dict[str, object]:
    """The detailed /healthz (with an admin token)."""
    admin = mint_token(SECRET, admin=True, ttl=60)
    request = f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    response = await raw_request(HOST, port, request.encode())
    body: dict[str, object] = response.json()
    return body


def role(health: dict[str, object]) -> object:
    capture = health.get("capture")
    return capture.get("role") if isinstance(capture, dict) else None


async def test_two_relays_one_consumes_the_other_takes_over(db: str, tmp_path: Path) -> None:
    log = tmp_path / "relays.log"
    args = ("--capture", "--dsn", db, "--heartbeat", "30", "--public-channel", "t")
    env = {"SSERELAY_JWT_SECRET": SECRET}
    async with (
        relay_process(*args, log=log, env=env) as a,
        relay_process(*args, log=log, env=env) as b,
    ):
        await wait_until(
            lambda: _one_leader(a.port, b.port),
            timeout=60,
            message=lambda: log.read_text(errors="replace")[-2000:],
        )
        leader, standby = (a, b) if role(await healthz(a.port)) == "leader" else (b, a)
        assert role(await healthz(standby.port)) == "standby"
        client = await SseClient.open(HOST, standby.port, "/events/t")
        await client.wait_ready()
        collector = Collector(client)
        try:
            with showing_frames(client):
                writers = Writers(db, 2)
                await collector.until(200)
                leader.proc.send_signal(signal.SIGKILL)
                await leader.proc.wait()
                await writers.until(200)
                await wait_until(lambda: _is_leader(standby.port), timeout=60)
                await collector.until(len(collector.events) + 100)
                await writers.finish()
                rows = table_rows(db)
                assert_exactly_once_in_commit_order(await collector.until(len(rows)), rows)
        finally:
            await collector.close()
    assert "Traceback" not in log.read_text(errors="replace")


async def _one_leader(*ports: int) -> bool:
    roles = [role(await healthz(port)) for port in ports]
    return sorted(map(str, roles)) == ["leader", "standby"]


async def _is_leader(port: int) -> bool:
    return role(await healthz(port)) == "leader"


def _wal_status(dsn: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_status FROM pg_replication_slots").fetchone()
    return None if row is None else str(row[0])


async def test_an_invalidated_slot_sends_missed_and_is_recreated_on_request(db: str) -> None:
    execute(db, "CREATE TABLE filler (x text)")
    async with running_relay(db, heartbeat=30.0) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/t")
        try:
            with showing_frames(client):
                await client.wait_ready()
                async with running_capturer(db):
                    execute(db, "INSERT INTO t (writer, seq) VALUES (0, 1)")
                    assert json.loads((await client.next_event()).data)["new"]["seq"] == 1
                # No capturer: the slot holds WAL, until max_slot_wal_keep_size (1MB) gives up.
                execute(db, "INSERT INTO t (writer, seq) VALUES (0, 2)")
                for _ in range(4):
                    execute(
                        db,
                        "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)",
                        "SELECT pg_switch_wal()",
                    )
                execute(db, "CHECKPOINT")
                await wait_until(lambda: _wal_status(db) == "lost", timeout=30)

                async with running_capturer(db, ready=lambda c: c.role == "slot_lost") as capturer:
                    missed = await client.next_event()
                    assert missed.event == "missed"
                    assert "slot" in json.loads(missed.data)["reason"]
                    assert not capturer.healthy
                    with psycopg.connect(db, autocommit=True) as conn:
                        status = capture_slot.configured_slot(conn)
                        assert status is not None
                        _, told = capture_slot.reset_slot(conn)
                    assert told == ["t"]
                    again = await client.next_event()
                    assert again.event == "missed"
                    await wait_until(lambda: capturer.streaming, timeout=30)
                    execute(db, "INSERT INTO t (writer, seq) VALUES (0, 3)")
                    resumed = await client.next_event()
                    assert json.loads(resumed.data)["new"]["seq"] == 3
                    assert capturer.healthy
        finally:
            await client.close()


async def test_lag_past_the_limit_makes_healthz_fail(db: str) -> None:
    async with running_relay(db, capture=True, capture_max_lag=1.0, heartbeat=30.0) as relay:
        capturer = relay.capturer
        assert capturer is not None
        await wait_until(lambda: capturer.lag_seconds is not None, timeout=30)
        status, body = relay.health(detail=True)
        assert status == 200 and body["capture"]["lag_bytes"] is not None  # type: ignore[index]
        assert "capture" not in relay.health()[1]  # the public view: status and reason only
        with psycopg.connect(db) as blocker:  # the log writer will wait for this lock
            blocker.execute("LOCK TABLE sserelay.capture_state IN ACCESS EXCLUSIVE MODE")
            await wait_until(lambda: relay.health()[0] == 503, timeout=30)
            assert relay.health()[1] == {"status": "unavailable", "reason": "capture lagging"}
            status, body = relay.health(detail=True)
            assert body["capture"]["healthy"] is False  # type: ignore[index]
            assert body["capture"]["lag_seconds"] > 1.0  # type: ignore[index]
        await wait_until(lambda: relay.health()[0] == 200, timeout=30)
        metrics = relay.metrics.render().decode()
        assert "sserelay_capture_lag_seconds" in metrics and "sserelay_capture_lag_bytes" in metrics
