"""Redis's publish ceiling for sserelay: how many events a second can be published.

The counterpart of ``bench/publish_bench.py`` (PostgreSQL). Two clients:

- **sserelay's Python client** (``RedisBus.publish``, redis-py, one process and one
  connection per publisher, autocommit as a web app would publish): raw ``PUBLISH`` of the
  envelope ``publish(durable=False)`` sends, and a durable publish (the Lua script: XADD +
  PUBLISH, atomic). From 1 publisher, 8 on one channel, 8 on 8 channels. A run is 1 s of
  warm-up, then ``--seconds`` counted; after each durable run the streams are checked (every
  publish is there, each entry names the previous one).
- **redis-benchmark** (C, no pipelining, 50 connections): the same two commands, to show
  what Redis itself takes when the client is not the limit.

On a 2-core machine, the Python publishers and Redis share the cores: the ``Redis CPU``
column (``INFO cpu`` growth over the run) says how busy Redis itself was. Every key is
under a prefix of its own (``sserelay-bench-<random>:``), deleted at the end.

    .venv/bin/python bench/redis_publish_bench.py --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from sserelay.bus.redis.publish import RedisBus
from sserelay.bus.redis.scripts import PUBLISH_LUA, durable_channel, stream_key

BENCH = Path(__file__).resolve().parent
DATA = "x" * 100
SHAPES = {"1": (1, 1), "8, one channel": (8, 1), "8, 8 channels": (8, 8)}


def publisher(
    url: str, prefix: str, channel: str, kind: str, seconds: float, out: Any, start: Any
) -> None:
    bus = RedisBus(url, prefix=prefix)
    latencies: list[float] = []
    start.wait()
    warm_until = time.monotonic() + 1.0
    end = warm_until + seconds
    count = 0
    durable = kind == "durable"
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        bus.publish(channel, DATA, durable=durable)
        if t0 >= warm_until:
            latencies.append(time.monotonic() - t0)
            count += 1
    bus.close()
    out.put((count, latencies))


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_case(url: str, prefix: str, kind: str, shape: str, seconds: float) -> dict[str, Any]:
    procs_n, channels_n = SHAPES[shape]
    tag = uuid.uuid4().hex[:6]
    channels = [f"{kind}-{tag}-{i}" for i in range(channels_n)]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = ctx.Event()
    procs = [
        ctx.Process(
            target=publisher,
            args=(url, prefix, channels[i % channels_n], kind, seconds, out, start),
        )
        for i in range(procs_n)
    ]
    for p in procs:
        p.start()
    with redis.Redis.from_url(url) as client:
        start.set()
        time.sleep(1.0)  # the warm-up
        cpu0, t0 = redis_cpu(client), time.monotonic()
        results = [out.get(timeout=seconds + 60) for _ in procs]
        cpu = (redis_cpu(client) - cpu0) / (time.monotonic() - t0)
        for p in procs:
            p.join(10)
        count = sum(r[0] for r in results)
        latencies = sorted(x for r in results for x in r[1])
        checked = None
        if kind == "durable":
            checked = all(verify(client, prefix, c) for c in channels)
    n = len(latencies)
    return {
        "kind": kind,
        "shape": shape,
        "events_per_s": round(count / seconds),
        "p50_ms": round(latencies[n // 2] * 1000, 3) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 3) if n else None,
        "redis_cpu": round(cpu, 2),
        "verified": checked,
    }


def verify(client: redis.Redis, prefix: str, channel: str) -> bool:
    """Every entry of the stream names the one before it (no gap, nothing out of order)."""
    key = stream_key(prefix, channel)
    prev = "0-0"
    last = "-"
    while True:
        batch = client.xrange(key, last if last == "-" else f"({last}", "+", count=10_000)
        if not batch:
            return True
        for raw_id, fields in batch:
            if fields[b"p"].decode() != prev:
                return False
            prev = raw_id.decode()
        last = prev


def redis_benchmark(url: str, prefix: str, requests: int) -> list[dict[str, Any]]:
    """redis-benchmark (C) for PUBLISH and for the durable script, 50 connections."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    client = redis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    sha = client.script_load(PUBLISH_LUA)
    host, port = str(kwargs.get("host", "127.0.0.1")), str(kwargs.get("port", 6379))
    channel = f"{prefix}bench"
    payload = json.dumps({"data": DATA})
    commands = {
        "raw PUBLISH": ["PUBLISH", channel, payload],
        "durable script": [
            *("EVALSHA", sha, "1", stream_key(prefix, "bench"), durable_channel(prefix, "bench")),
            *(DATA, "", "0", "0"),
            "7999",
        ],
    }
    out = []
    for name, command in commands.items():
        cmd = [tool, "-h", host, "-p", port, "-c", "50", "-n", str(requests), "--csv", *command]
        print("$", " ".join(cmd[:9]), "...", flush=True)
        cpu0, t0 = redis_cpu(client), time.monotonic()
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
        cpu = (redis_cpu(client) - cpu0) / (time.monotonic() - t0)
        rows = [line.split(",") for line in text.strip().splitlines()]
        head, values = rows[0], rows[-1]
        row = dict(zip([h.strip('"') for h in head], [v.strip('"') for v in values], strict=False))
        out.append(
            {
                "command": name,
                "events_per_s": round(float(row["rps"])),
                "p50_ms": float(row.get("p50_latency_ms", "nan")),
                "p99_ms": float(row.get("p99_latency_ms", "nan")),
                "redis_cpu": round(cpu, 2),
            }
        )
    client.close()
    return out


def cleanup(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--redis", default=os.environ.get("SSERELAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per redis-benchmark run")
    args = parser.parse_args()
    prefix = f"sserelay-bench-{uuid.uuid4().hex[:8]}:"
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(args.repeats):
            for shape in SHAPES:
                for kind in ("raw", "durable"):
                    result = run_case(args.redis, prefix, kind, shape, args.seconds)
                    result["round"] = round_ + 1
                    print(json.dumps(result), flush=True)
                    runs.append(result)
        native = redis_benchmark(args.redis, prefix, args.requests)
    finally:
        cleanup(args.redis, prefix)
    lines = [
        "| publish | publishers | events/s | range | p50 / p99 ms | Redis CPU | verified |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for shape in SHAPES:
        for kind in ("raw", "durable"):
            mine = [r for r in runs if r["shape"] == shape and r["kind"] == kind]
            rates = [r["events_per_s"] for r in mine]
            label = "raw `PUBLISH`" if kind == "raw" else "durable (XADD + PUBLISH script)"
            verified = (
                "-" if kind == "raw" else ("yes" if all(r["verified"] for r in mine) else "NO")
            )
            spread = f"{min(rates):,}-{max(rates):,}"
            lines.append(
                f"| {label} | {shape} | {statistics.median(rates):,.0f} | {spread}"
                f" | {statistics.median(r['p50_ms'] for r in mine):.2f} /"
                f" {statistics.median(r['p99_ms'] for r in mine):.2f}"
                f" | {statistics.median(r['redis_cpu'] for r in mine):.0%} | {verified} |"
            )
    if native:
        lines += ["", "| redis-benchmark, 50 connections | events/s | p50 / p99 ms | Redis CPU |"]
        lines += ["|---|---:|---:|---:|"]
        for r in native:
            lines.append(
                f"| {r['command']} | {r['events_per_s']:,} | {r['p50_ms']} / {r['p99_ms']}"
                f" | {r['redis_cpu']:.0%} |"
            )
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    lines += ["", f"load average after: {load}; {os.cpu_count()} cores"]
    text = "\n".join(lines)
    print("\n" + text)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"redis-publish-{stamp}.json").write_text(
        json.dumps({"runs": runs, "redis_benchmark": native, "table": text}, indent=1)
    )
    return 0 if all(r["verified"] is not False for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
