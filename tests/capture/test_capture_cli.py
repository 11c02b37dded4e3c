"""``sserelay capture ...`` and ``serve --capture`` from the command line."""

from __future__ import annotations

import json

import psycopg
import pytest
from capture_helpers import execute, running_capturer

from pgcluster import Cluster, capture_database
from sserelay.cli import build_parser, main
from sserelay.cli.serve import serve_settings
from sserelay.config import Settings, load_settings
from sserelay.errors import ConfigError

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_capture_commands(logical_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_database(logical_cluster.dsn(), install=False) as db:
        execute(db, "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, status text)")
        status, _, err = run(capsys, "capture", "list", "--dsn", db)
        assert status == 2 and "capture is not installed" in err

        status, out, _ = run(
            capsys, "capture", "add", "orders", "--channel", "orders:{customer_id}",
            "--events", "insert,update", "--columns", "id,customer_id", "--dsn", db,
        )  # fmt: skip
        assert status == 0
        assert "capturing public.orders (insert, update) on 'orders:{customer_id}'" in out
        assert "slot sserelay_cap_" in out

        status, _, err = run(capsys, "capture", "add", "orders", "--channel", "o:{x}", "--dsn", db)
        assert status == 2 and "sserelay: error: channel template 'o:{x}': orders has no x" in err
        status, _, err = run(
            capsys, "capture", "add", "orders", "--channel", "o", "--events", "upsert", "--dsn", db
        )
        assert status == 2 and "events must be some of insert, update, delete, truncate" in err

        status, out, _ = run(capsys, "capture", "list", "--dsn", db)
        assert out.split() == [
            "public.orders",
            "->",
            "orders:{customer_id}",
            "events=insert,update",
            "columns=['id',",
            "'customer_id']",
        ]
        status, out, _ = run(capsys, "capture", "list", "--json", "--dsn", db)
        assert json.loads(out) == [
            {
                "table": "public.orders",
                "channel": "orders:{customer_id}",
                "event_prefix": "orders",
                "events": ["insert", "update"],
                "columns": ["id", "customer_id"],
                "where": None,
            }
        ]

        status, out, _ = run(capsys, "capture", "status", "--json", "--dsn", db)
        report = json.loads(out)
        assert status == 0 and report["slot_exists"] and not report["lost"]
        assert report["rules"] == 1 and report["lag_bytes"] >= 0

        status, out, _ = run(capsys, "capture", "status", "--dsn", db)
        assert "slot:           sserelay_cap_" in out and "(inactive, wal_status reserved)" in out

        status, out, _ = run(capsys, "capture", "remove", "orders", "--dsn", db)
        assert status == 0 and "no longer capturing orders" in out
        status, _, err = run(capsys, "capture", "remove", "orders", "--dsn", db)
        assert status == 1 and "orders was not captured" in err

        status, out, _ = run(capsys, "capture", "reset-slot", "--dsn", db)
        assert status == 0 and "recreated; `missed` sent on 0 channels" in out

        status, out, _ = run(capsys, "capture", "uninstall", "--dsn", db)
        assert status == 0 and "capture uninstalled (slot sserelay_cap_" in out
        with psycopg.connect(db) as conn:
            slots = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
            )
            assert slots.fetchone() == (0,)
            pubs = conn.execute("SELECT count(*) FROM pg_publication")
            assert pubs.fetchone() == (0,)


async def test_status_reports_lag_while_nobody_captures(
    capture_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(capture_dsn, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    with psycopg.connect(capture_dsn, autocommit=True) as conn:
        from sserelay.bus.postgres.capture import rules

        rules.add(conn, "t", "t")
    async with running_capturer(capture_dsn) as capturer:
        execute(capture_dsn, "INSERT INTO t VALUES (1, 'a')")
        await _until(lambda: capturer.counters.events == 1)
        await _until(lambda: capturer.status()["lag_seconds"] is not None)
        assert capturer.status()["role"] == "leader"
    execute(capture_dsn, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(2, 2000) g")
    status, out, _ = run(capsys, "capture", "status", "--json", "--dsn", capture_dsn)
    report = json.loads(out)
    assert status == 0
    assert report["lag_bytes"] > 200_000  # the 1999 rows nobody captured yet
    assert report["events"] == 1 and report["transactions"] == 1
    assert report["last_commit_time"] is not None and report["lag_seconds"] is not None


async def _until(condition: object) -> None:
    from sserelay.testing import wait_until

    await wait_until(condition, timeout=30)  # type: ignore[arg-type]


def test_serve_capture_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--capture", "--capture-max-lag", "30s"])
    settings = serve_settings(args)
    assert settings.capture and settings.capture_max_lag == 30.0
    monkeypatch.setenv("SSERELAY_CAPTURE", "yes")
    monkeypatch.setenv("SSERELAY_CAPTURE_MAX_LAG", "2m")
    settings = load_settings()
    assert settings.capture and settings.capture_max_lag == 120.0
    monkeypatch.setenv("SSERELAY_CAPTURE", "maybe")
    with pytest.raises(ConfigError, match="SSERELAY_CAPTURE='maybe' is not a boolean"):
        load_settings()
    with pytest.raises(ConfigError, match="capture_max_lag must be positive"):
        Settings(capture_max_lag=0)


def test_capture_needs_the_postgres_bus() -> None:
    from sserelay.relay import Relay

    with pytest.raises(ConfigError, match="capture needs the PostgreSQL bus"):
        Relay(Settings(capture=True, redis_url="redis://127.0.0.1:6379/0"))


def test_a_relay_captures_through_its_direct_dsn() -> None:
    """The capturer needs a session (replication, an advisory lock): listen_dsn's."""
    from sserelay.relay import Relay

    direct, pooled = "postgresql://direct/app", "postgresql://pgbouncer/app"
    relay = Relay(Settings(capture=True, dsn=pooled, listen_dsn=direct), dsn=pooled)
    assert relay.capturer is not None and relay.capturer.dsn == direct
    relay = Relay(Settings(capture=True, dsn=pooled), dsn=pooled)
    assert relay.capturer is not None and relay.capturer.dsn == pooled
