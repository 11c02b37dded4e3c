"""How cost grows: sweeps that draw the plots in docs/img (matplotlib, the ``[bench]`` extra).

  rss      relay RSS against streams, 1,000 to 100,000 (one process up to 15,000, then
           ``--workers N`` with ~14,300 streams per worker), beside one nchan worker (to
           15,000); 100 channels, 2 events/s for 3 s so that every stream is checked
  p99      p99 latency against streams on one process: sserelay, one nchan worker and the
           baseline, one channel, 5 events/s for 10 s
  payload  server CPU per delivery against the event's size, 100 B to 64 KB: sserelay on
           Redis (PostgreSQL's NOTIFY takes at most 8,000 bytes) and nchan; 500 streams,
           10 events/s for 6 s
  publish  publish ceiling against publisher connections (1 to 16): PostgreSQL raw NOTIFY
           and durable ``sserelay.publish`` (bench/publish_bench.py), Redis raw PUBLISH and
           the durable script (bench/redis_publish_bench.py's publishers, one process
           each), and redis-benchmark (C) for Redis's own ceiling; then Redis Cluster (3
           masters, 3 replicas started for the run: bench/cluster_bench.py), raw SPUBLISH
           and the durable script from the same Python client, and redis-benchmark --cluster

Every run is a bench/loadgen.py run through bench/run.py's machinery (own server on a
free port, hard deadlines); results go to bench/results/curves-<timestamp>/ (one JSON line
per point), the PNGs to docs/img/curve-<name>.png, each naming the command and commit.

    .venv/bin/python bench/curves.py                       # all four, about 25 minutes
    .venv/bin/python bench/curves.py --only payload,publish
    .venv/bin/python bench/curves.py --plot bench/results/curves-20261201-230000  # redraw
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import run

BENCH = Path(__file__).resolve().parent
IMG = BENCH.parent / "docs" / "img"
CURVES = ("rss", "p99", "payload", "publish")
PER_WORKER = 14_300  # streams per relay worker past one process (20,000 open files each)
PER_CLIENT_PROCESS = 12_500
#: ``--scale``: stream counts are multiplied by this (a quick trial of the harness).
SCALE = [1.0]


def streams_of(n: int) -> int:
    return max(20, round(n * SCALE[0]))


def load(streams: int, extra: list[str]) -> list[str]:
    procs = max(1, math.ceil(streams / PER_CLIENT_PROCESS))
    args = ["--clients", str(streams), "--procs", str(max(procs, 2 if streams > 2000 else 1))]
    args += ["--source-addrs", "8" if streams > 20_000 else "4"]
    return [*args, "--connect-timeout", "300", "--deadline", "560", *extra]


def point(session: run.Session, curve: str, kind: str, x: float, args: list[str]) -> None:
    """One loadgen run; its result is kept as a JSON line of the curve."""
    name = f"{curve}-{kind}-{x:g}"
    result = run.record(session, run.loadgen(session, curve, kind, name, args)).result
    line = {"curve": curve, "server": kind, "x": x, "result": result}
    with (session.out / "curves.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def sweep_rss(session: run.Session) -> None:
    extra = ["--channels", "100", "--rate", "2", "--duration", "3", "--drain-timeout", "20"]
    for nominal in (1000, 2000, 5000, 10_000, 15_000, 20_000, 50_000, 100_000):
        streams = streams_of(nominal)
        workers = 1 if nominal <= 15_000 else math.ceil(nominal / PER_WORKER)
        kind = "sserelay" if workers == 1 else f"sserelay-workers-{workers}"
        point(session, "rss", kind, streams, load(streams, extra))
        if nominal <= 15_000:
            point(session, "rss", "nchan", streams, load(streams, extra))


def sweep_p99(session: run.Session) -> None:
    extra = ["--rate", "5", "--duration", "10", "--drain-timeout", "20"]
    for nominal in (1000, 2000, 5000, 10_000, 15_000):
        streams = streams_of(nominal)
        for kind in ("sserelay", "nchan", "baseline"):
            point(session, "p99", kind, streams, load(streams, extra))


def sweep_payload(session: run.Session) -> None:
    for size in (100, 1000, 4000, 16_000, 65_536):
        extra = ["--rate", "10", "--duration", "6", "--drain-timeout", "20"]
        extra += ["--payload-bytes", str(size)]
        for kind in ("sserelay-redis", "nchan"):
            point(session, "payload", kind, size, load(streams_of(500), extra))


def sweep_publish(session: run.Session, seconds: float) -> None:
    """Publishes/s against publisher connections, PostgreSQL then Redis."""
    import redis_publish_bench as rpb

    out = session.out / "curves.jsonl"
    for n in (2, 4, 8, 16):
        report = session.out / f"publish-pg-{n}.json"
        cmd = [str(run.PYTHON), str(BENCH / "publish_bench.py"), "--clients", str(n)]
        cmd += ["--modes", "notify,durable", "--repeats", "1", "--seconds", f"{seconds:g}"]
        cmd += ["--dsn", session.dsn, "--out", str(report)]
        session.say(f"$ {shlex.join(cmd)}")
        done = subprocess.run(cmd, capture_output=True, timeout=600)
        if done.returncode != 0:
            session.say(f"!! publish_bench --clients {n}: {done.stderr.decode()[-300:]}")
            continue
        for r in json.loads(report.read_text())["runs"]:
            if r["channels"] == r["clients"]:  # 1 conn, and N conns on N channels
                bus = f"postgres-{r['mode']}"
                line = {"curve": "publish", "server": bus, "x": r["clients"], "result": r}
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    prefix = f"sserelay-bench-curves-{os.getpid()}:"
    try:
        for n in (1, 2, 4, 8, 16):
            shape = f"{n}, {n} channels"
            rpb.SHAPES[shape] = (n, n)
            for kind in ("raw", "durable"):
                r = rpb.run_case(session.redis, prefix, kind, shape, seconds)
                session.say(f"redis {kind} x{n}: {r['events_per_s']:,} events/s")
                line = {"curve": "publish", "server": f"redis-{kind}", "x": n, "result": r}
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
            for r in redis_benchmark(session.redis, n):
                line = {"curve": "publish", "server": "redis-benchmark", "x": n, "result": r}
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    finally:
        rpb.cleanup(session.redis, prefix)
    cmd = [str(run.PYTHON), str(BENCH / "cluster_bench.py"), "--repeats", "1"]
    cmd += ["--seconds", f"{seconds:g}", "--out", str(out)]
    session.say(f"$ {shlex.join(cmd)}")
    done = subprocess.run(cmd, capture_output=True, timeout=900)
    session.say(done.stdout.decode()[-2000:])
    if done.returncode != 0:
        session.say(f"!! cluster_bench: {done.stderr.decode()[-300:]}")


def redis_benchmark(url: str, connections: int) -> list[dict[str, Any]]:
    """redis-benchmark (C) PUBLISH with ``connections`` connections: Redis's own ceiling."""
    import shutil
    import urllib.parse

    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    parts = urllib.parse.urlsplit(url)
    cmd = [tool, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    cmd += ["-c", str(connections), "-n", "100000", "--csv", "PUBLISH", "curves-bench", "x" * 100]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    rows = [line.split(",") for line in text.strip().splitlines()]
    if len(rows) < 2:
        return []
    row = dict(zip([h.strip('"') for h in rows[0]], [v.strip('"') for v in rows[-1]], strict=False))
    return [{"events_per_s": round(float(row["rps"]))}]


# -- the plots -----------------------------------------------------------------------


LABELS = {
    "sserelay": "sserelay (1 process)",
    "sserelay-redis": "sserelay on Redis (1 process)",
    "nchan": "nchan (1 worker)",
    "baseline": "raw asyncio (bench/baseline.py)",
    "postgres-notify": "PostgreSQL pg_notify",
    "postgres-durable": "PostgreSQL sserelay.publish (durable)",
    "redis-raw": "Redis PUBLISH (redis-py, 1 process each)",
    "redis-durable": "Redis durable script (redis-py, 1 process each)",
    "redis-benchmark": "Redis PUBLISH (redis-benchmark, C)",
    "cluster-raw": "Redis Cluster SPUBLISH (redis-py, 1 process each)",
    "cluster-durable": "Redis Cluster durable script (redis-py, 1 process each)",
    "cluster-benchmark": "Redis Cluster SPUBLISH (redis-benchmark --cluster, C)",
    "cluster-benchmark-durable": "Redis Cluster durable script (redis-benchmark --cluster, C)",
}


def series(lines: list[dict[str, Any]], curve: str, y: Any) -> dict[str, list[tuple[float, float]]]:
    """server -> sorted (x, y) points of one curve; failed runs are left out."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in lines:
        if line["curve"] != curve or line["result"] is None:
            continue
        server = line["server"]
        if server.startswith("sserelay-workers-"):
            server = "sserelay"  # one line: one process, then N workers (annotated)
        value = y(line["result"])
        if value is not None:
            out.setdefault(server, []).append((line["x"], value))
    # Several runs at one x (publish_bench measures 1 connection with every N): their median.
    merged: dict[str, list[tuple[float, float]]] = {}
    for server, points in out.items():
        by_x: dict[float, list[float]] = {}
        for x, value in points:
            by_x.setdefault(x, []).append(value)
        merged[server] = sorted((x, statistics.median(v)) for x, v in by_x.items())
    return merged


def plot(results: Path) -> list[Path]:
    """Draw every curve found in ``results``/curves.jsonl into docs/img; return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(x) for x in (results / "curves.jsonl").read_text().splitlines()]
    meta = json.loads((results / "meta.json").read_text())
    footer = f"{meta['command']}  |  sserelay {meta['source']}  |  {meta['date']}"
    specs = {
        "rss": (
            lambda r: r["server_rss_mb"]["peak"],
            "streams",
            "server RSS, MB (all processes)",
            "Relay memory against streams",
        ),
        "p99": (
            lambda r: r["latency_ms"]["p99"],
            "streams on one process (one channel, 5 events/s)",
            "p99 latency, ms",
            "Tail latency against streams per process",
        ),
        "payload": (
            lambda r: r["server_cpu_us_per_delivery"],
            "event data, bytes",
            "server CPU per delivery, us",
            "CPU per delivery against payload size (500 streams, 10 events/s)",
        ),
        "publish": (
            lambda r: r["events_per_s"],
            "publisher connections (one channel each)",
            "events published per second",
            "Publish ceiling against publishers",
        ),
    }
    written = []
    for curve, (y, xlabel, ylabel, title) in specs.items():
        data = series(lines, curve, y)
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for server, points in data.items():
            xs, ys = zip(*points, strict=True)
            style = "--" if "benchmark" in server else "-"
            ax.plot(xs, ys, style, marker="o", label=LABELS.get(server, server))
        if curve == "rss":
            pss = series(lines, "rss", lambda r: r["server_rss_mb"]["pss_subscribed"])
            for server, points in pss.items():
                xs, ys = zip(*points, strict=True)
                label = f"{LABELS.get(server, server)}: PSS (shared pages counted once)"
                ax.plot(xs, ys, ":", marker=".", label=label)
            annotate_workers(ax, lines)
        if curve in ("rss", "payload", "publish"):
            ax.set_xscale("log")
        if curve in ("publish", "p99"):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.text(0.01, 0.01, footer, fontsize=6, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = IMG / f"curve-{curve}.png"
        IMG.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def annotate_workers(ax: Any, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        server, r = line["server"], line["result"]
        if line["curve"] == "rss" and r and server.startswith("sserelay-workers-"):
            workers = server.rsplit("-", 1)[1]
            ax.annotate(
                f"{workers} workers",
                (line["x"], r["server_rss_mb"]["peak"]),
                textcoords="offset points",
                xytext=(-30, 8),
                fontsize=7,
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default=",".join(CURVES), help="curves to measure")
    parser.add_argument("--plot", type=Path, help="only redraw the plots of this results dir")
    parser.add_argument("--publish-seconds", type=float, default=3.0)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply stream counts (e.g. 0.02 to try it)"
    )
    parser.add_argument("--dsn", default=os.environ.get("SSERELAY_BENCH_DSN", run.DSN))
    parser.add_argument("--redis", default=os.environ.get("SSERELAY_BENCH_REDIS", run.REDIS))
    args = parser.parse_args()
    if args.plot:
        for path in plot(args.plot):
            print(f"wrote {path}")
        return 0
    SCALE[0] = args.scale
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    if not set(wanted) <= set(CURVES):
        parser.error(f"--only takes {', '.join(CURVES)}")
    run.raise_nofile(print)
    out = BENCH / "results" / time.strftime("curves-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    session = run.Session(
        out=out,
        dsn=args.dsn,
        profile=False,
        redis=args.redis,
        redis_prefix=f"sserelay-bench-{os.getpid()}-{time.time_ns() % 10**6}:",
    )
    source = run.source_state()
    command = shlex.join([".venv/bin/python", "bench/curves.py", *sys.argv[1:]])
    meta = {"command": command, "source": source, "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "meta.json").write_text(json.dumps(meta))
    session.say(f"results in {out}; sserelay source: {source}")
    if any(c != "publish" for c in wanted):
        import nchan

        if not nchan.ensure_installed(session.say):
            return 1
    for curve in wanted:
        session.say(f"\n== curve {curve}")
        if curve == "rss":
            sweep_rss(session)
        elif curve == "p99":
            sweep_p99(session)
        elif curve == "payload":
            sweep_payload(session)
        elif curve == "publish":
            sweep_publish(session, args.publish_seconds)
    for path in plot(out):
        session.say(f"wrote {path}")
    (out / "session.log").write_text("\n".join(session.log) + "\n")
    failed = [r for r in session.runs if r.result is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
