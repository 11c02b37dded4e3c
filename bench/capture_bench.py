"""Change data capture, end to end: rows committed -> events read by an SSE client.

Three ways of getting an INSERT to the browser, measured in the same run, through the
same relay process (``sserelay serve --capture``) and the same client:

  capture   the table has a capture rule; the writers only INSERT;
  trigger   the table has the trigger ``sserelay.bus.postgres.schema.trigger_sql`` makes (a
            ``sserelay.publish`` per row, inside the writing transaction);
  publish   the writers call ``sserelay.publish()`` themselves, in the INSERT's
            transaction (what ``publish_changes`` in Django does).

Throughput: ``--writers`` connections (default: 1, then 8) each commit ``--txns``
transactions of ``--rows`` rows as fast as they can; the rate is all rows divided by the
time from the first commit to the client reading the last event (so a path that
falls behind its writers pays for the backlog). Latency: ``--rate`` rows a second (1 row
per transaction, spread over ``--latency-writers``, default 8) for ``--seconds``; each
row's latency is from its COMMIT returning to the client reading its event; p50/p99 over
all rows.

Capacity (``capture`` mode): ``--total`` rows committed while nobody captures, then an
in-process capturer times logging them all (decode, route, log, notify: capture alone).

Every run uses a fresh table and channel. Rounds repeat all runs in a shuffled order;
rates are medians over rounds, and ratios against the trigger path are taken per round,
then their median. The PostgreSQL is a private cluster (tests/pgcluster.py, fsync on,
wal_level = logical) unless ``--dsn`` names a server with ``wal_level = logical``.

    .venv/bin/python bench/capture_bench.py                      # everything, 3 rounds
    .venv/bin/python bench/capture_bench.py --modes capture,trigger --writers 8 --repeats 1

Prints a table and writes JSON to bench/results/capture-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sserelay.bus.postgres.capture import rules
from sserelay.bus.postgres.capture import slot as capture_slot
from sserelay.bus.postgres.schema import trigger_sql

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH.parent / "tests"))
from pgcluster import capture_database, private_cluster  # noqa: E402  # the tests' helper

MODES = ("capture", "trigger", "publish")
PAYLOAD = "x" * 100
_ID = re.compile(rb'"id":(\d+)')


# -- the client -------------------------------------------------------------------------------


class Reader:
    """A raw SSE client on one channel, in a thread: counts events and notes, per row id,
    when its event arrived."""

    def __init__(self, port: int, channel: str, expected: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        path = f"/events/{channel}"
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        self.expected = expected
        self.count = 0
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while self.count < self.expected:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                break
            now = time.monotonic()
            buffer += chunk
            if not self.ready.is_set() and b": ready" in buffer:
                self.ready.set()
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if b"\ndata:" in block or block.startswith(b"data:"):
                    match = _ID.search(block)
                    if match:
                        self.arrived[int(match[1])] = now
                        self.count += 1
        self.done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the writers ------------------------------------------------------------------------------


def _insert_sql(mode: str, table: str, channel: str) -> sql.Composed:
    insert = sql.SQL("INSERT INTO {} (id, k, payload) VALUES (%s, %s, %s)").format(
        sql.Identifier(table)
    )
    if mode != "publish":
        return insert
    return sql.SQL(
        "WITH r AS ({} RETURNING id, k, payload) "
        "SELECT sserelay.publish({}, row_to_json(r)::text, 'bench.insert') FROM r"
    ).format(insert, sql.Literal(channel))


def write(
    dsn: str, mode: str, table: str, channel: str, ids: range, rows: int, rate: float | None
) -> dict[int, float]:
    """Insert ``ids`` in transactions of ``rows``; return each id's commit time. With
    ``rate`` (transactions a second), on a fixed schedule."""
    committed: dict[int, float] = {}
    statement = _insert_sql(mode, table, channel)
    with psycopg.connect(dsn) as conn:
        start = time.monotonic()
        for n, first in enumerate(range(ids.start, ids.stop, rows)):
            if rate is not None:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            batch = range(first, min(first + rows, ids.stop))
            with conn.cursor() as cur:
                cur.executemany(statement, [(i, i % 7, PAYLOAD) for i in batch])
            conn.commit()
            now = time.monotonic()
            for i in batch:
                committed[i] = now
    return committed


# -- one run ---------------------------------------------------------------------------------


def prepare(dsn: str, mode: str, table: str, channel: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, k int, payload text)").format(
                sql.Identifier(table)
            )
        )
        if mode == "capture":
            rules.add(conn, table, channel, events=["insert"], event_prefix="bench")
        elif mode == "trigger":
            conn.execute(
                trigger_sql(table, channel, operations=["INSERT"], event_prefix="bench").encode()
            )


def run(
    dsn: str, port: int, mode: str, writers: int, total: int, rows: int, rate: float | None
) -> dict[str, Any]:
    tag = f"{mode}_{os.urandom(4).hex()}"
    table, channel = f"bench_{tag}", f"bench-{tag}"
    prepare(dsn, mode, table, channel)
    reader = Reader(port, channel, total)
    if not reader.ready.wait(30):
        raise SystemExit("the relay did not say ': ready'")
    per_writer = total // writers
    results: list[dict[int, float]] = [{} for _ in range(writers)]
    per_writer_rate = None if rate is None else rate / writers

    def writer(w: int) -> None:
        ids = range(w * per_writer + 1, (w + 1) * per_writer + 1)
        results[w] = write(dsn, mode, table, channel, ids, rows, per_writer_rate)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = time.monotonic()
    timeout = max(60.0, 10 * (written - started))
    if not reader.done.wait(timeout):
        reader.close()
        raise SystemExit(f"{mode}: {reader.count} of {total} events after {timeout:.0f}s")
    reader.close()
    committed = {i: t for r in results for i, t in r.items()}
    latencies = sorted(reader.arrived[i] - committed[i] for i in committed)
    last = max(reader.arrived.values())
    return {
        "mode": mode,
        "writers": writers,
        "rows": total,
        "rows_per_txn": rows,
        "rate": rate,
        "writer_rows_per_s": total / (written - started),
        "end_to_end_rows_per_s": total / (last - started),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "max_ms": 1000 * latencies[-1],
    }


# -- capacity: a backlog, captured into the log -------------------------------------------------


def drain(admin: str, total: int, rows: int) -> dict[str, Any]:
    """Commit ``total`` rows while nobody captures, then time an in-process capturer
    logging them all: what capture alone can do (decode, route, log and notify), with no
    writer and no relay competing for the machine."""
    import asyncio

    from sserelay.bus.postgres.capture import Capturer
    from sserelay.testing import wait_until

    with capture_database(admin) as db:
        prepare(db, "capture", "backlog", "backlog")
        with psycopg.connect(db) as conn:
            for first in range(1, total + 1, rows):
                conn.execute(
                    "INSERT INTO backlog SELECT g, g %% 7, %s"
                    " FROM generate_series(%s::bigint, %s::bigint) AS g",
                    (PAYLOAD, first, min(first + rows, total + 1) - 1),
                )
                conn.commit()

        async def capture() -> float:
            capturer = Capturer(db)
            task = asyncio.create_task(capturer.run())
            try:
                await wait_until(lambda: capturer.streaming, timeout=60)
                started = time.monotonic()
                await wait_until(lambda: capturer.counters.events >= total, timeout=600)
                return time.monotonic() - started
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        seconds = asyncio.run(capture())
    return {"mode": "drain", "rows": total, "rows_per_txn": rows, "seconds": seconds,
            "rows_per_s": total / seconds}  # fmt: skip


# -- the relay and the database ---------------------------------------------------------------


@contextlib.contextmanager
def relay(dsn: str, log: Path, *, split: bool = False) -> Iterator[int]:
    """``sserelay serve --capture`` in a process of its own; yields its port. ``split``:
    ``sserelay serve`` and ``sserelay capture run`` in two processes instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSERELAY_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(BENCH.parent / "src")
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *_profiler(), "-m", "sserelay", "serve",
             *([] if split else ["--capture"]), "--dsn", dsn,
             "--port", "0", "--heartbeat", "30", "--max-streams", "100"],
            stdout=subprocess.PIPE, stderr=stderr, env=env,
        )  # fmt: skip
        capturer = None
        if split:
            capturer = subprocess.Popen(
                [sys.executable, "-m", "sserelay", "capture", "run", "--dsn", dsn],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r":(\d+) \(streams", line)
        if not match:
            raise SystemExit(f"the relay did not start: {line!r}; see {log}")
        yield int(match[1])
    finally:
        for child in (proc, capturer):
            if child is not None:
                child.terminate()
                child.wait(15)


def _profiler() -> list[str]:
    """``SSERELAY_BENCH_PROFILE=path``: run the relay under cProfile, writing there."""
    path = os.environ.get("SSERELAY_BENCH_PROFILE")
    return ["-m", "cProfile", "-o", path] if path else []


def wait_streaming(dsn: str) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE database = current_database()"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise SystemExit("the capturer never started streaming")


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (shape, mode), and the per-round median ratio against ``trigger``."""
    table = []
    shapes = sorted({(r["writers"], r["rows_per_txn"], r["rate"]) for r in results}, key=str)
    for shape in shapes:
        runs = [r for r in results if (r["writers"], r["rows_per_txn"], r["rate"]) == shape]
        rounds = sorted({r["round"] for r in runs})
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode]
            if not mine:
                continue
            ratios = []
            for n in rounds:
                this = [r for r in mine if r["round"] == n]
                base = [r for r in runs if r["round"] == n and r["mode"] == "trigger"]
                if this and base:
                    key = "p99_ms" if shape[2] else "end_to_end_rows_per_s"
                    ratios.append(this[0][key] / base[0][key])
            table.append(
                {
                    "writers": shape[0],
                    "rows_per_txn": shape[1],
                    "rate": shape[2],
                    "mode": mode,
                    **{
                        k: statistics.median(r[k] for r in mine)
                        for k in ("end_to_end_rows_per_s", "writer_rows_per_s", "p50_ms", "p99_ms")
                    },
                    "vs_trigger": statistics.median(ratios) if ratios else None,
                    "runs": len(mine),
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a server with wal_level = logical (default: private)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--writers", default="1,8", help="writer counts to measure (1,8)")
    parser.add_argument("--rows", type=int, default=50, help="rows per transaction (50)")
    parser.add_argument("--total", type=int, default=40_000, help="rows per throughput run")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run: rows/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run: length")
    parser.add_argument("--latency-writers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-drain", action="store_true", help="skip the capacity runs")
    parser.add_argument(
        "--split", action="store_true", help="capture in its own process (`sserelay capture run`)"
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with contextlib.ExitStack() as stack:
        admin = args.dsn or stack.enter_context(private_cluster({"fsync": "on"})).dsn()
        db = stack.enter_context(capture_database(admin))
        with psycopg.connect(db, autocommit=True) as conn:
            capture_slot.install(conn)
        log = RESULTS / f"capture-{stamp}-relay.log"
        port = stack.enter_context(relay(db, log, split=args.split))
        wait_streaming(db)
        shapes: list[tuple[int, int, int, float | None]] = [
            (int(w), args.total, args.rows, None) for w in args.writers.split(",")
        ]
        if not args.no_latency:
            shapes.append((args.latency_writers, int(args.rate * args.seconds), 1, args.rate))
        results = []
        drains = []
        for n in range(args.repeats):
            if not args.no_drain and "capture" in modes:
                result = drain(admin, args.total, args.rows)
                result.update(round=n, loadavg=loadavg())
                print(json.dumps(result), flush=True)
                drains.append(result)
            plan = [(shape, mode) for shape in shapes for mode in modes]
            random.shuffle(plan)
            for (writers, total, rows, rate), mode in plan:
                before = loadavg()
                result = run(db, port, mode, writers, total, rows, rate)
                result.update(round=n, loadavg_before=before, loadavg_after=loadavg())
                print(json.dumps(result), flush=True)
                results.append(result)
    summary = summarise(results)
    print(f"\n{'writers':>7} {'rows/txn':>8} {'rate':>6} {'mode':>8} {'rows/s e2e':>11}"
          f" {'writer rows/s':>13} {'p50 ms':>7} {'p99 ms':>7} {'vs trigger':>10}")  # fmt: skip
    for s in summary:
        ratio = "-" if s["vs_trigger"] is None else f"{s['vs_trigger']:.2f}"
        rate = "max" if s["rate"] is None else f"{s['rate']:.0f}"
        print(
            f"{s['writers']:>7} {s['rows_per_txn']:>8} {rate:>6} {s['mode']:>8}"
            f" {s['end_to_end_rows_per_s']:>11.0f} {s['writer_rows_per_s']:>13.0f}"
            f" {s['p50_ms']:>7.1f} {s['p99_ms']:>7.1f} {ratio:>10}"
        )
    if drains:
        rates = [d["rows_per_s"] for d in drains]
        print(
            f"\ncapture capacity (a backlog of {args.total} rows in {args.rows}-row transactions"
            f" into the log): median {statistics.median(rates):.0f} rows/s"
            f" (runs: {', '.join(f'{r:.0f}' for r in rates)})"
        )
    out = RESULTS / f"capture-{stamp}.json"
    everything = {"args": vars(args), "runs": results, "drains": drains, "summary": summary}
    out.write_text(json.dumps(everything, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
