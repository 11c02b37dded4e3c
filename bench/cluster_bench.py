"""Redis Cluster's publish ceiling for sserelay, against publisher connections.

The cluster's counterpart of ``bench/redis_publish_bench.py`` (one Redis) and
``bench/publish_bench.py`` (PostgreSQL), for the publish-ceiling plot beside them:

- **sserelay's Python client** (``RedisBus.publish``, which finds the cluster by itself:
  redis-py's cluster client, one process and one connection per master per publisher):
  raw ``SPUBLISH`` of the envelope ``publish(durable=False)`` sends, and a durable publish
  (the Lua script: XADD + SPUBLISH, atomic, on the master of the channel's slot). N
  publishers on N channels (their slots spread over the masters), N = 1, 2, 4, 8, 16. A
  run is 1 s of warm-up, then ``--seconds`` counted; after each durable run every stream
  is checked (each entry names the one before it).
- **redis-benchmark --cluster** (C, no pipelining, N connections spread over the masters):
  ``SPUBLISH`` and the durable script, to show what the cluster itself takes when the
  client is not the limit.
- With ``--compare URL`` (one Redis), the same measurements on it, in the same run:
  servers ``redis-raw``, ``redis-durable`` and ``redis-benchmark`` (as ``bench/curves.py``
  names them) and ``redis-benchmark-durable``.

The cluster is ``--redis URL`` (any node), or, by default, one of the bench's own started
in a temporary directory (3 masters, 3 replicas, tests/cluster.py's ``LocalCluster``).
``Redis CPU`` is the growth of ``INFO cpu`` summed over the masters, per second of the run.

Output: one JSON line per point, in the shape of ``bench/curves.py``'s ``curves.jsonl``
(``{"curve": "publish", "server": "cluster-raw" | "cluster-durable" |
"cluster-benchmark" | "cluster-benchmark-durable", "x": N, "result": {"events_per_s": ...}}``),
on stdout and appended to ``--out`` if given; then a table.

    .venv/bin/python bench/cluster_bench.py --seconds 3 --repeats 2 --out cluster.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import redis_publish_bench as rpb
from sserelay.bus.redis.cluster.layout import CLUSTER, CLUSTER_PUBLISH_LUA
from sserelay.bus.redis.scripts import PUBLISH_LUA, durable_channel, stream_key

BENCH = Path(__file__).resolve().parent
COUNTS = (1, 2, 4, 8, 16)


@contextlib.contextmanager
def cluster_url(url: str | None) -> Iterator[str]:
    """``url``, or a cluster of the bench's own for the duration."""
    if url:
        yield url
        return
    sys.path.insert(0, str(BENCH.parent / "tests"))
    from cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="sserelay-cluster-bench-") as root:
        local = LocalCluster(Path(root))
        try:
            local.start()
            yield local.url
        finally:
            local.stop()


def masters_cpu(client: redis.RedisCluster) -> float:
    total = 0.0
    for node in client.get_primaries():
        info = client.info("cpu", target_nodes=node)
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def verify(client: redis.RedisCluster, prefix: str, channel: str) -> bool:
    """Every entry of the stream names the one before it (no gap, nothing out of order)."""
    prev, last = "0-0", "-"
    key = CLUSTER.stream_key(prefix, channel)
    while batch := client.xrange(key, last if last == "-" else f"({last}", "+", count=10_000):
        for raw_id, fields in batch:
            if fields[b"p"].decode() != prev:
                return False
            prev = raw_id.decode()
        last = prev
    return True


def run_case(url: str, prefix: str, kind: str, n: int, seconds: float) -> dict[str, Any]:
    """N publisher processes (redis_publish_bench's), one channel each."""
    tag = uuid.uuid4().hex[:6]
    channels = [f"{kind}-{tag}-{i}" for i in range(n)]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = ctx.Event()
    procs = [
        ctx.Process(target=rpb.publisher, args=(url, prefix, c, kind, seconds, out, start))
        for c in channels
    ]
    for p in procs:
        p.start()
    with redis.RedisCluster.from_url(url) as client:
        start.set()
        time.sleep(1.0)  # the publishers' warm-up
        cpu0, t0 = masters_cpu(client), time.monotonic()
        results = [out.get(timeout=seconds + 120) for _ in procs]
        cpu = (masters_cpu(client) - cpu0) / (time.monotonic() - t0)
        for p in procs:
            p.join(10)
        checked = all(verify(client, prefix, c) for c in channels) if kind == "durable" else None
    count = sum(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[1])
    size = len(latencies)
    return {
        "kind": kind,
        "publishers": n,
        "events_per_s": round(count / seconds),
        "p50_ms": round(latencies[size // 2] * 1000, 3) if size else None,
        "p99_ms": round(latencies[min(size - 1, int(size * 0.99))] * 1000, 3) if size else None,
        "redis_cpu": round(cpu, 2),
        "verified": checked,
    }


def benchmark(
    url: str, prefix: str, connections: int, requests: int, *, clustered: bool = True
) -> list[dict[str, Any]]:
    """redis-benchmark (``--cluster`` on a cluster): a plain publish (``SPUBLISH`` on a
    cluster, ``PUBLISH`` on one Redis) and the durable script, ``connections`` clients."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    payload = json.dumps({"data": rpb.DATA})
    if clustered:
        with redis.RedisCluster.from_url(url) as cluster:
            sha = cluster.script_load(CLUSTER_PUBLISH_LUA)
            node = cluster.get_default_node()
            host, port = str(node.host), str(node.port)
        # "{tag}" is redis-benchmark's: it becomes a tag of each master's, so every client
        # publishes to the master it is connected to.
        name, key = f"{prefix}bench{{tag}}", f"{prefix}sserelay:log:{{tag}}b"
        notify = f"{prefix}sserelay.d.{{tag}}b"
        server, command, flags = "cluster-benchmark", "SPUBLISH", ["--cluster"]
    else:
        with redis.Redis.from_url(url) as single:
            sha = single.script_load(PUBLISH_LUA)
            kwargs = single.connection_pool.connection_kwargs
            host, port = str(kwargs.get("host", "127.0.0.1")), str(kwargs.get("port", 6379))
        name, key = f"{prefix}bench", stream_key(prefix, "bench")
        notify = durable_channel(prefix, "bench")
        server, command, flags = "redis-benchmark", "PUBLISH", []
    commands = {
        server: [command, name, payload],
        f"{server}-durable": ["EVALSHA", sha, "1", key, notify, rpb.DATA, "", "0", "0", "7999"],
    }
    found = []
    for label, args in commands.items():
        cmd = [tool, *flags, "-h", host, "-p", port, "-c", str(connections)]
        cmd += ["-n", str(requests), "--csv", *args]
        cpu0, t0 = cpu_of(url, clustered), time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        cpu = (cpu_of(url, clustered) - cpu0) / (time.monotonic() - t0)
        # The CSV (after a description of the cluster, with --cluster).
        rows = [x.split(",") for x in done.stdout.splitlines() if x.startswith('"')]
        if done.returncode != 0 or len(rows) < 2:
            print(f"!! {' '.join(cmd[:8])}: {done.stderr[-300:]}", file=sys.stderr)
            continue
        head, values = rows[0], rows[-1]
        row = dict(zip([h.strip('"') for h in head], [v.strip('"') for v in values], strict=False))
        result = {
            "connections": connections,
            "events_per_s": round(float(row["rps"])),
            "p50_ms": float(row.get("p50_latency_ms", "nan")),
            "p99_ms": float(row.get("p99_latency_ms", "nan")),
            "redis_cpu": round(cpu, 2),
        }
        found.append({"server": label, "result": result})
    return found


def cpu_of(url: str, clustered: bool) -> float:
    if clustered:
        with redis.RedisCluster.from_url(url) as cluster:
            return masters_cpu(cluster)
    with redis.Redis.from_url(url) as single:
        return rpb.redis_cpu(single)


def cleanup(url: str, prefix: str) -> None:
    with redis.RedisCluster.from_url(url) as client:
        for key in client.scan_iter(match=prefix + "*", count=1000):  # redis-benchmark's too
            client.delete(key)


def emit(line: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(text + "\n")


def table(lines: list[dict[str, Any]]) -> str:
    """Median events/s per (server, N), and the Redis CPU of that run."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for line in lines:
        cells.setdefault((line["server"], line["x"]), []).append(line["result"])
    rows = [
        "| server | publishers | events/s (median) | runs | Redis CPU (cores) |",
        "|---|---|---|---|---|",
    ]
    for (server, x), results in sorted(cells.items()):
        rates = [r["events_per_s"] for r in results]
        middle = sorted(results, key=lambda r: r["events_per_s"])[len(results) // 2]
        rows.append(
            f"| {server} | {x} | {statistics.median(rates):,.0f} | "
            f"{', '.join(f'{r:,}' for r in rates)} | {middle['redis_cpu']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--redis", help="any node of a running cluster (default: start one)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--requests", type=int, default=100_000, help="per redis-benchmark run")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--compare", help="one Redis to measure the same way, for comparison")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    prefix = f"sserelay-bench-{uuid.uuid4().hex[:8]}:"
    lines: list[dict[str, Any]] = []
    with cluster_url(args.redis) as url:
        try:
            for _ in range(args.repeats):
                for n in counts:
                    for kind in ("raw", "durable"):
                        result = run_case(url, prefix, kind, n, args.seconds)
                        line = {"curve": "publish", "server": f"cluster-{kind}", "x": n}
                        lines.append({**line, "result": result})
                        emit(lines[-1], args.out)
                        if args.compare:
                            rpb.SHAPES[f"{n}, {n} channels"] = (n, n)
                            one = rpb.run_case(
                                args.compare, prefix, kind, f"{n}, {n} channels", args.seconds
                            )
                            line = {"curve": "publish", "server": f"redis-{kind}", "x": n}
                            lines.append({**line, "result": one})
                            emit(lines[-1], args.out)
            for n in counts:
                found = benchmark(url, prefix, n, args.requests)
                if args.compare:
                    found += benchmark(args.compare, prefix, n, args.requests, clustered=False)
                for one in found:
                    lines.append({"curve": "publish", "x": n, **one})
                    emit(lines[-1], args.out)
        finally:
            cleanup(url, prefix)
            if args.compare:
                rpb.cleanup(args.compare, prefix)
    print(table(lines))
    failed = [x for x in lines if x["result"].get("verified") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
