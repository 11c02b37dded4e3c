"""What presence costs (docs/presence.md): run by hand, loopback only, bounded.

1. **Per stream, memory**: a relay process (``sserelay serve``) holds ``--streams``
   streams over ``--channels`` channels, each stream with a token of its own subject;
   its RSS is read with presence off, then on (``--presence 'room-*'``). The difference
   over the stream count is what presence adds per stream.
2. **Per join, time**: the tracker's bookkeeping per connect + disconnect (in process),
   and one flush of ``K`` changed rows to the bus (``sserelay.presence_write`` on
   PostgreSQL, the write script on Redis), median of ``--rounds``.

    python bench/presence_bench.py --dsn postgresql://postgres@127.0.0.1:5432/bench \\
        --redis redis://127.0.0.1:6379/0 --streams 10000

The database is migrated (``sserelay migrate``); the Redis keys live under a prefix of
the run's own and are deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sserelay import mint_token
from sserelay.bus.postgres.schema import migrate
from sserelay.core.presence import Batch, Change, PresenceTracker

SECRET = "presence-bench-secret-" + "x" * 32


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def relay(dsn: str, presence: bool) -> AsyncIterator[tuple[int, int]]:
    """A relay process: (pid, port)."""
    args = ["--dsn", dsn, "--port", "0", "--jwt-secret", SECRET, "--public-channel", "room-*"]
    args += ["--max-streams", "50000"]
    if presence:
        args += ["--presence", "room-*"]
    env = {**os.environ, "LOG_LEVEL": "WARNING", "SSERELAY_MAX_STREAMS_PER_SUBJECT": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sserelay", "serve", *args,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r":(\d+) ", line)
        assert match, line
        yield proc.pid, int(match.group(1))
    finally:
        proc.terminate()
        await proc.wait()


async def open_stream(port: int, channel: str, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events/{channel}?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head[:200]
    return writer


async def memory(dsn: str, streams: int, channels: int) -> dict[bool, tuple[float, float]]:
    """RSS (MB) of a relay before and after opening ``streams`` streams, presence off/on."""
    tokens = [mint_token(SECRET, subject=f"user-{i}", ttl=3600) for i in range(streams)]
    out = {}
    for presence in (False, True):
        async with relay(dsn, presence) as (pid, port):
            await asyncio.sleep(1)
            before = rss_mb(pid)
            writers = []
            for start in range(0, streams, 500):
                batch = range(start, min(start + 500, streams))
                writers += await asyncio.gather(
                    *(open_stream(port, f"room-{i % channels}", tokens[i]) for i in batch)
                )
            await asyncio.sleep(3)  # a few flushes
            after = rss_mb(pid)
            out[presence] = (before, after)
            for writer in writers:
                writer.close()
    return out


def tracker_cost(n: int) -> float:
    """Microseconds of bookkeeping per stream in and out (enter, leave, one take)."""
    tracker = PresenceTracker(lambda c: True, linger=0.0)

    class Lease:
        deadline = None

        def release(self) -> None:
            pass

    start = time.perf_counter()
    leases = [tracker.wrap((f"room-{i % 100}",), Lease(), f"u{i}") for i in range(n)]
    tracker.written(tracker.take(0.0))
    for lease in leases:
        lease.release()
    tracker.written(tracker.take(1.0))
    return (time.perf_counter() - start) / n * 1e6


def batch_of(k: int, channels: int, round_: int) -> Batch:
    changes = [Change(f"room-{i % channels}", f"u{i}", 1 + round_ % 2) for i in range(k)]
    return Batch(changes, {c.channel for c in changes})


async def flush_cost(store: Any, k: int, channels: int, rounds: int) -> float:
    """Median ms of one write of ``k`` changed rows (events computed)."""
    times = []
    for r in range(rounds):
        batch = batch_of(k, channels, r)
        start = time.perf_counter()
        await store.write(batch, events=True)
        times.append((time.perf_counter() - start) * 1000)
    await store.remove({f"room-{i}" for i in range(channels)})
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis")
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    migrate(args.dsn)

    print(f"tracker: {tracker_cost(100_000):.2f} us per stream in + out (100,000 streams)")
    from sserelay.bus.postgres.log import PostgresLog
    from sserelay.bus.postgres.presence import PostgresPresence

    log = PostgresLog(args.dsn)
    await log.open()
    store = PostgresPresence(log.pool, f"bench-{uuid.uuid4().hex[:8]}", 15)
    for k in (1, 100, 1000, 10_000):
        ms = await flush_cost(store, k, args.channels, args.rounds)
        print(f"postgres: one write of {k:>6} rows: {ms:8.2f} ms ({ms * 1000 / k:.1f} us/row)")
    await log.close()
    if args.redis:
        from sserelay.bus.redis.cluster.log import ClusterLog
        from sserelay.bus.redis.presence import RedisPresence

        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        rlog = ClusterLog(args.redis, prefix=prefix)
        rstore = RedisPresence(rlog, "bench", 15)
        for k in (1, 100, 1000, 10_000):
            ms = await flush_cost(rstore, k, args.channels, args.rounds)
            print(f"redis:    one write of {k:>6} rows: {ms:8.2f} ms ({ms * 1000 / k:.1f} us/row)")
        await rlog.close()

    result = await memory(args.dsn, args.streams, args.channels)
    for presence, (before, after) in result.items():
        label = "presence on " if presence else "presence off"
        per = (after - before) * 1024 * 1024 / args.streams
        print(f"{label}: RSS {before:.1f} -> {after:.1f} MB with {args.streams} streams "
              f"({per:.0f} bytes per stream)")  # fmt: skip
    off = result[False][1] - result[False][0]
    on = result[True][1] - result[True][0]
    print(f"presence adds {(on - off) * 1024 * 1024 / args.streams:.0f} bytes per stream")


if __name__ == "__main__":
    asyncio.run(main())
