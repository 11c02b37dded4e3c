"""Publish throughput of durable channels, against plain NOTIFY.

Creates a throwaway database (``sserelay_bench_<random>``, dropped at the end even on
failure or Ctrl-C), installs the schema there with ``sserelay.schema.migrate``, then
measures autocommit publishes per second:

  notify     ``SELECT pg_notify(%s, %s)`` with the envelope ``publish(durable=False)``
             sends;
  durable    ``SELECT sserelay.publish(%s, %s, %s)`` (the real function: per-channel row
             lock held to commit, so ids follow commit order);
  unordered  the same function body with the id from a sequence instead of the
             ``sserelay.channels`` upsert, so no per-channel lock (and no ordering
             guarantee): created in the bench database only, to price the guarantee;
  insert     reference: ``unordered`` without the ``pg_notify`` (what the log costs when
             commits do not take NOTIFY's cluster-wide lock).

each from 1 connection on 1 channel, from N connections on ONE channel (worst case for
``durable``) and from N connections on N channels (one each). Every measurement is a
warm-up followed by a fixed window. Rounds repeat the whole set: the shapes in a shuffled
order, and within a shape the modes back to back (also shuffled), so the runs a ratio
compares saw about the same machine. Rates are medians over rounds; ratios are computed
per round, then their median is taken. Threads, one connection each (psycopg releases
the GIL while it waits for the server). Machine load (load average, CPU busy, the
client's own CPU, commits in other databases, WAL syncs) is recorded next to every
number, because the server and the client share the machine with whatever else runs
there.

    .venv/bin/python bench/publish_bench.py --seconds 5 --repeats 5
    .venv/bin/python bench/publish_bench.py --modes durable,unordered --clients 4
    .venv/bin/python bench/publish_bench.py --synchronous-commit off   # see docs/durable.md

Prints a table and writes JSON to bench/results/publish-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import secrets
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sserelay.bus.postgres import schema
from sserelay.bus.postgres.statements import NOTIFY as NOTIFY_SQL
from sserelay.bus.postgres.statements import PUBLISH as PUBLISH_SQL
from sserelay.bus.publish import encode_payload

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DEFAULT_DSN = os.environ.get("SSERELAY_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
APP_NAME = "sserelay-publish-bench"

MODES = ("notify", "durable", "unordered", "insert")
MODE_TITLES = {
    "notify": "raw pg_notify",
    "durable": "durable sserelay.publish",
    "unordered": "durable, no ordering lock",
    "insert": "log insert, no NOTIFY (ref.)",
}
UNORDERED_SQL = "SELECT sserelay_bench.publish_unordered(%s::text, %s::text, %s::text)"
INSERT_SQL = "SELECT sserelay_bench.insert_only(%s::text, %s::text, %s::text)"

# sserelay.publish's body with the id drawn from a sequence: no sserelay.channels row,
# hence no per-channel lock held to commit, hence ids NOT in commit order. Bench only.
BENCH_FUNCTIONS = r"""
CREATE SCHEMA sserelay_bench;
CREATE SEQUENCE sserelay_bench.event_ids;

CREATE FUNCTION sserelay_bench.publish_unordered(channel text, data text, event text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    new_id   bigint;
    payload  text;
BEGIN
    PERFORM sserelay.check_channel(publish_unordered.channel);
    IF publish_unordered.data IS NULL THEN
        RAISE EXCEPTION 'event data is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF publish_unordered.event ~ '[\r\n]' THEN
        RAISE EXCEPTION 'line break in event' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    new_id := nextval('sserelay_bench.event_ids');

    INSERT INTO sserelay.events (channel, id, event, data)
    VALUES (publish_unordered.channel, new_id, publish_unordered.event, publish_unordered.data);

    IF octet_length(publish_unordered.data) < 8000 THEN
        payload := '{"seq":' || new_id
            || coalesce(',"event":' || to_json(publish_unordered.event)::text, '')
            || ',"data":' || to_json(publish_unordered.data)::text || '}';
    END IF;
    IF payload IS NULL OR octet_length(payload) >= 8000 THEN
        payload := '{"seq":' || new_id || ',"large":true}';
    END IF;
    PERFORM pg_catalog.pg_notify(publish_unordered.channel, payload);
    RETURN new_id;
END
$$;

CREATE FUNCTION sserelay_bench.insert_only(channel text, data text, event text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    new_id  bigint;
BEGIN
    PERFORM sserelay.check_channel(insert_only.channel);
    new_id := nextval('sserelay_bench.event_ids');
    INSERT INTO sserelay.events (channel, id, event, data)
    VALUES (insert_only.channel, new_id, insert_only.event, insert_only.data);
    RETURN new_id;
END
$$;
"""


def make_data(size: int) -> str:
    """A JSON object of exactly ``size`` bytes (at least 30), like a small chat message."""
    head = '{"user":"bench","text":"'
    tail = '"}'
    return head + "x" * max(0, size - len(head) - len(tail)) + tail


@dataclass(frozen=True)
class Scenario:
    mode: str
    clients: int
    channels: int

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.clients}c/{self.channels}ch"

    @property
    def shape(self) -> str:
        if self.clients == 1:
            return "1 conn"
        if self.channels == 1:
            return f"{self.clients} conns, 1 channel"
        return f"{self.clients} conns, {self.channels} channels"


@dataclass
class RunResult:
    scenario: str
    mode: str
    clients: int
    channels: int
    repeat: int
    seconds: float
    events: int
    events_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_max: float
    client_cpu_pct: float  # of one core, all threads of this process
    machine_busy_pct: float  # of all cores, /proc/stat
    loadavg_1m_before: float
    loadavg_1m_after: float
    other_db_commits_per_s: float | None
    wal_syncs_per_event: float | None  # cluster-wide syncs in the window / our events
    other_active_backends: int | None
    log_check: str
    latencies_s: list[float] = field(default_factory=list, repr=False)


# -- machine load ----------------------------------------------------------------------


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    if before is None or after is None or after[1] == before[1]:
        return float("nan")
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


class Monitor:
    """What else the cluster is doing: commits in the other databases, their active
    backends, and the cluster's WAL syncs (an admin connection of its own)."""

    def __init__(self, admin_dsn: str, bench_db: str) -> None:
        self.conn = psycopg.connect(admin_dsn, autocommit=True, application_name=APP_NAME)
        self.bench_db = bench_db

    def commits(self) -> dict[int, int]:
        """Commits so far per other database (by oid: a database dropped and created again
        meanwhile, as test suites do, is a new oid and left out of the delta)."""
        with contextlib.suppress(psycopg.Error):
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            rows = self.conn.execute(
                "SELECT datid::bigint, xact_commit FROM pg_stat_database"
                " WHERE datname IS NOT NULL AND datname <> %s",
                (self.bench_db,),
            ).fetchall()
            return {int(oid): int(n) for oid, n in rows}
        return {}

    @staticmethod
    def commits_between(before: dict[int, int], after: dict[int, int]) -> int | None:
        if not before or not after:
            return None
        return sum(max(0, after[oid] - n) for oid, n in before.items() if oid in after)

    def wal_syncs(self) -> int | None:
        """WAL syncs (fsync/fdatasync) of the whole cluster so far, from pg_stat_wal.
        Backends report them at most once a second, so a window's delta is approximate."""
        with contextlib.suppress(psycopg.Error):
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            row = self.conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
            return None if row is None else int(row[0])
        return None

    def other_active(self) -> int | None:
        with contextlib.suppress(psycopg.Error):
            row = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                " AND backend_type = 'client backend' AND datname IS DISTINCT FROM %s"
                " AND pid <> pg_backend_pid()",
                (self.bench_db,),
            ).fetchone()
            return None if row is None else int(row[0])
        return None

    def close(self) -> None:
        self.conn.close()


# -- one measurement -------------------------------------------------------------------


class Worker(threading.Thread):
    def __init__(self, dsn: str, query: str, params: tuple[Any, ...], conn_opts: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.query = query
        self.params = params
        self.conn_opts = conn_opts
        self.ready = threading.Event()
        self.go = threading.Event()
        self.stop = threading.Event()
        self.start_at = 0.0
        self.end_at = 0.0
        self.total = 0  # every publish that returned, warm-up included
        self.counted = 0  # publishes started inside the window
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, application_name=APP_NAME, options=self.conn_opts
            ) as conn:
                conn.execute("SELECT 1")
                self.ready.set()
                self.go.wait()
                query, params, start, end = self.query, self.params, self.start_at, self.end_at
                clock, lat = time.perf_counter, self.latencies
                while not self.stop.is_set():
                    t0 = clock()
                    if t0 >= end:
                        break
                    conn.execute(query, params, prepare=True)  # type: ignore[arg-type]
                    self.total += 1
                    if t0 >= start:
                        lat.append(clock() - t0)
                        self.counted += 1
        except BaseException as exc:
            self.error = exc
            self.ready.set()


def channel_names(sc: Scenario) -> list[str]:
    return [f"bench_{sc.mode}_{sc.clients}c_{sc.channels}ch_{i}" for i in range(sc.channels)]


def query_params(sc: Scenario, channel: str, data: str) -> tuple[str, tuple[Any, ...]]:
    if sc.mode == "notify":
        return NOTIFY_SQL, (channel, encode_payload(data))
    query = {"durable": PUBLISH_SQL, "unordered": UNORDERED_SQL, "insert": INSERT_SQL}[sc.mode]
    return query, (channel, data, None)


def check_log(conn: psycopg.Connection[Any], sc: Scenario, published: int) -> str:
    """Every publish is in the log (durable: ids 1..n per channel, no gap); then empty it."""
    if sc.mode == "notify":
        return "n/a"
    rows = conn.execute(
        "SELECT channel, count(*), min(id), max(id) FROM sserelay.events"
        " WHERE channel = ANY(%s) GROUP BY channel",
        (channel_names(sc),),
    ).fetchall()
    stored = sum(r[1] for r in rows)
    problems = []
    if stored != published:
        problems.append(f"{stored} rows for {published} publishes")
    if sc.mode == "durable":
        for channel, count, lo, hi in rows:
            if (lo, hi) != (1, count):
                problems.append(f"{channel}: ids {lo}..{hi} for {count} rows")
    conn.execute("TRUNCATE sserelay.events, sserelay.channels")
    if problems:
        raise RuntimeError(f"{sc.key}: log check failed: {'; '.join(problems)}")
    return f"ok ({stored} rows)" if sc.mode != "durable" else f"ok ({stored} rows, ids 1..n)"


def measure(
    sc: Scenario,
    repeat: int,
    *,
    dsn: str,
    data: str,
    seconds: float,
    warmup: float,
    conn_opts: str,
    check_conn: psycopg.Connection[Any],
    monitor: Monitor,
) -> RunResult:
    names = channel_names(sc)
    workers = []
    for i in range(sc.clients):
        query, params = query_params(sc, names[i % sc.channels], data)
        workers.append(Worker(dsn, query, params, conn_opts))
    try:
        for w in workers:
            w.start()
        for w in workers:
            if not w.ready.wait(timeout=30):
                raise RuntimeError(f"{sc.key}: a publisher could not connect within 30 s")
            if w.error is not None:
                raise w.error
        load_before = os.getloadavg()[0]
        start = time.perf_counter() + warmup
        end = start + seconds
        for w in workers:
            w.start_at, w.end_at = start, end
            w.go.set()
        time.sleep(max(0.0, start - time.perf_counter()))
        cpu0, proc0, commits0 = cpu_times(), time.process_time(), monitor.commits()
        syncs0 = monitor.wal_syncs()
        active = monitor.other_active()
        time.sleep(max(0.0, end - time.perf_counter()))
        cpu1, proc1, commits1 = cpu_times(), time.process_time(), monitor.commits()
        syncs1 = monitor.wal_syncs()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                raise RuntimeError(f"{sc.key}: a publisher is stuck after the window")
            if w.error is not None:
                raise w.error
    finally:
        for w in workers:
            w.stop.set()
            w.go.set()
    lat = sorted(x for w in workers for x in w.latencies)
    counted = sum(w.counted for w in workers)
    other_commits = Monitor.commits_between(commits0, commits1)
    other = None if other_commits is None else other_commits / seconds
    syncs = None
    if syncs0 is not None and syncs1 is not None and counted:
        syncs = (syncs1 - syncs0) / counted
    return RunResult(
        scenario=sc.key,
        mode=sc.mode,
        clients=sc.clients,
        channels=sc.channels,
        repeat=repeat,
        seconds=seconds,
        events=counted,
        events_per_s=counted / seconds,
        latency_ms_p50=1000 * percentile(lat, 50),
        latency_ms_p99=1000 * percentile(lat, 99),
        latency_ms_max=1000 * (lat[-1] if lat else float("nan")),
        client_cpu_pct=100.0 * (proc1 - proc0) / seconds,
        machine_busy_pct=busy_pct(cpu0, cpu1),
        loadavg_1m_before=load_before,
        loadavg_1m_after=os.getloadavg()[0],
        other_db_commits_per_s=other,
        wal_syncs_per_event=syncs,
        other_active_backends=active,
        log_check=check_log(check_conn, sc, sum(w.total for w in workers)),
        latencies_s=lat,
    )


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- the throwaway database ------------------------------------------------------------


def create_database(admin_dsn: str) -> str:
    name = f"sserelay_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True, application_name=APP_NAME) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True, application_name=APP_NAME) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def server_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for setting in (
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "max_connections",
    ):
        row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
        info[setting] = None if row is None else row[0]
    return info


def free_connections(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    ).fetchone()
    return 0 if row is None else int(row[0])


# -- report ----------------------------------------------------------------------------


def summarise(runs: list[RunResult], scenarios: list[Scenario]) -> list[dict[str, Any]]:
    rows = []
    for sc in scenarios:
        mine = [r for r in runs if r.scenario == sc.key]
        if not mine:
            continue
        rates = [r.events_per_s for r in mine]
        lat = sorted(x for r in mine for x in r.latencies_s)
        rows.append(
            {
                "scenario": sc.key,
                "mode": sc.mode,
                "clients": sc.clients,
                "channels": sc.channels,
                "runs": len(mine),
                "events_per_s_median": statistics.median(rates),
                "events_per_s_min": min(rates),
                "events_per_s_max": max(rates),
                "latency_ms_p50": 1000 * percentile(lat, 50),
                "latency_ms_p99": 1000 * percentile(lat, 99),
                "client_cpu_pct_median": statistics.median(r.client_cpu_pct for r in mine),
                "machine_busy_pct_median": statistics.median(r.machine_busy_pct for r in mine),
                "loadavg_1m_median": statistics.median(r.loadavg_1m_before for r in mine),
                "other_db_commits_per_s_median": median_or_none(
                    [r.other_db_commits_per_s for r in mine]
                ),
                "wal_syncs_per_event_median": median_or_none([r.wal_syncs_per_event for r in mine]),
            }
        )
    return rows


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


RATIO_PAIRS = {
    "durable/notify": ("durable", "notify"),
    "durable/unordered": ("durable", "unordered"),
    "unordered/insert": ("unordered", "insert"),
}


def ratios(runs: list[RunResult], clients: int) -> dict[str, dict[str, float]]:
    """Throughput ratios, computed per round (the runs of one shape are back to back
    there, so they saw about the same machine) and summarised over the rounds."""
    rate = {(r.repeat, r.scenario): r.events_per_s for r in runs}
    rounds = sorted({r.repeat for r in runs})
    shapes = {
        "1 conn": "1c/1ch",
        f"{clients} conns, 1 channel": f"{clients}c/1ch",
        f"{clients} conns, {clients} channels": f"{clients}c/{clients}ch",
    }
    wanted: dict[str, tuple[str, str]] = {}
    for label, shape in shapes.items():
        for name, (a, b) in RATIO_PAIRS.items():
            wanted[f"{name}, {label}"] = (f"{a}/{shape}", f"{b}/{shape}")
    for mode in MODES:
        one, many = f"{mode}/{clients}c/1ch", f"{mode}/{clients}c/{clients}ch"
        wanted[f"{mode}: 1 channel / {clients} channels"] = (one, many)
        wanted[f"{mode}: {clients} channels / 1 conn"] = (many, f"{mode}/1c/1ch")
    out: dict[str, dict[str, float]] = {}
    for name, (ka, kb) in wanted.items():
        per_round = [
            rate[(i, ka)] / rate[(i, kb)] for i in rounds if (i, ka) in rate and rate.get((i, kb))
        ]
        if per_round:
            out[name] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
    return out


def print_table(summary: list[dict[str, Any]], scenarios: list[Scenario]) -> None:
    by_key = {row["scenario"]: row for row in summary}
    head = (
        f"{'mode':<30} {'connections / channels':<24} {'events/s':>9} {'(min-max)':>13}"
        f" {'p50 ms':>7} {'p99 ms':>7} {'syncs/ev':>8} {'client CPU':>10} {'busy':>5}"
        f" {'load':>5}"
    )
    print(head)
    print("-" * len(head))
    for sc in scenarios:
        row = by_key.get(sc.key)
        if row is None:
            continue
        spread = f"{row['events_per_s_min']:.0f}-{row['events_per_s_max']:.0f}"
        syncs = row["wal_syncs_per_event_median"]
        syncs_text = "?" if syncs is None else f"{syncs:.2f}"
        print(
            f"{MODE_TITLES[sc.mode]:<30} {sc.shape:<24} {row['events_per_s_median']:>9.0f}"
            f" {spread:>13} {row['latency_ms_p50']:>7.2f} {row['latency_ms_p99']:>7.2f}"
            f" {syncs_text:>8} {row['client_cpu_pct_median']:>9.0f}%"
            f" {row['machine_busy_pct_median']:>4.0f}% {row['loadavg_1m_median']:>5.1f}"
        )


def round_order(scenarios: list[Scenario], shuffler: random.Random) -> list[Scenario]:
    """One round: the shapes in a random order, and within each shape all modes back to
    back, also in a random order (so the runs a ratio compares are close in time)."""
    shapes = list(dict.fromkeys((sc.clients, sc.channels) for sc in scenarios))
    shuffler.shuffle(shapes)
    order = []
    for shape in shapes:
        group = [sc for sc in scenarios if (sc.clients, sc.channels) == shape]
        shuffler.shuffle(group)
        order.extend(group)
    return order


def print_run(r: RunResult, repeats: int) -> None:
    print(
        f"  [{r.repeat + 1}/{repeats}] {r.scenario:<22} {r.events_per_s:>8.0f}/s"
        f"  p99 {r.latency_ms_p99:6.2f} ms  busy {r.machine_busy_pct:3.0f}%"
        f"  load {r.loadavg_1m_before:.2f}  client CPU {r.client_cpu_pct:3.0f}%"
        f"  other dbs {r.other_db_commits_per_s or 0:.0f} commits/s  {r.log_check}",
        flush=True,
    )


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN (CREATE/DROP DATABASE)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window")
    p.add_argument("--repeats", type=int, default=3, help="rounds of all scenarios")
    p.add_argument("--clients", type=int, default=8, help="concurrent connections")
    p.add_argument("--payload-bytes", type=int, default=100, help="size of the event data")
    p.add_argument("--seed", type=int, default=1, help="for the run order within rounds")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument(
        "--synchronous-commit",
        choices=("on", "off", "local", "remote_write", "remote_apply"),
        help="SET for the publishing sessions (default: the server's setting)",
    )
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/publish-<ts>.json)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown or not args.modes:
        p.error(f"--modes: unknown {sorted(unknown)}; choose from {','.join(MODES)}")
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1 or args.clients < 2:
        p.error("need --seconds > 0, --warmup >= 0, --repeats >= 1, --clients >= 2")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    n = args.clients
    scenarios = [
        Scenario(mode, clients, channels)
        for mode in args.modes
        for clients, channels in ((1, 1), (n, 1), (n, n))
    ]
    data = make_data(args.payload_bytes)
    conn_opts = "-c statement_timeout=30s"
    if args.synchronous_commit:
        conn_opts += f" -c synchronous_commit={args.synchronous_commit}"

    with psycopg.connect(args.dsn, autocommit=True, application_name=APP_NAME) as admin:
        info = server_info(admin)
        if free_connections(admin) < n + 3:
            print(f"publish_bench: fewer than {n + 3} free connections", file=sys.stderr)
            return 1
    started = datetime.datetime.now(datetime.UTC)
    name = create_database(args.dsn)
    dsn = make_conninfo(args.dsn, dbname=name)
    print(
        f"database {name} on {conninfo_to_dict(args.dsn).get('host', 'local')}:"
        f" PostgreSQL {info['server_version']}, synchronous_commit={info['synchronous_commit']},"
        f" fsync={info['fsync']}, wal_sync_method={info['wal_sync_method']}"
        + (
            f"; publishing sessions SET synchronous_commit={args.synchronous_commit}"
            if args.synchronous_commit
            else ""
        )
    )
    print(
        f"{args.repeats} round(s) x {len(scenarios)} runs, {args.warmup:g} s warm-up +"
        f" {args.seconds:g} s each; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    runs: list[RunResult] = []
    monitor = None
    try:
        version = schema.migrate(dsn)
        with psycopg.connect(dsn, autocommit=True, application_name=APP_NAME) as check_conn:
            check_conn.execute(BENCH_FUNCTIONS)
            monitor = Monitor(args.dsn, name)
            shuffler = random.Random(args.seed)
            for repeat in range(args.repeats):
                for sc in round_order(scenarios, shuffler):
                    result = measure(
                        sc,
                        repeat,
                        dsn=dsn,
                        data=data,
                        seconds=args.seconds,
                        warmup=args.warmup,
                        conn_opts=conn_opts,
                        check_conn=check_conn,
                        monitor=monitor,
                    )
                    runs.append(result)
                    print_run(result, args.repeats)
    finally:
        if monitor is not None:
            monitor.close()
        try:
            drop_database(args.dsn, name)
        except psycopg.Error as exc:
            print(f"publish_bench: could not drop database {name}: {exc}", file=sys.stderr)
        else:
            print(f"dropped database {name}", flush=True)

    summary = summarise(runs, scenarios)
    print()
    print_table(summary, scenarios)
    rat = ratios(runs, n)
    print("\nratios of events/s, per round (median, min-max over rounds):")
    for key, value in rat.items():
        print(f"  {key:<44} {value['median']:5.2f}  ({value['min']:.2f}-{value['max']:.2f})")
    report = {
        "started": started.isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server": info,
        "schema_version": version,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "psycopg": psycopg.__version__,
        },
        "payload": {"data_bytes": len(data), "notify_envelope_bytes": len(encode_payload(data))},
        "summary": summary,
        "ratios": rat,
        "runs": [{k: v for k, v in asdict(r).items() if k != "latencies_s"} for r in runs],
    }
    out = args.out or RESULTS / f"publish-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
