"""Run the benchmark scenarios in one go and write the results to bench/results/.

Every server is a subprocess in its own session, started on a free port and
stopped (SIGTERM, then SIGKILL) when its scenario ends, fails or times out.
Every load run is ``bench/loadgen.py`` with a hard timeout.

Scenarios (see docs/benchmarks.md for what each number means):

  a  10,000 streams held by one sserelay process: peak RSS (<= 150 MB) and
     its PostgreSQL connections (exactly one LISTEN connection; all listed).
  b  5,000 streams on one channel, 10 events/s for 20 s: 0 lost, p99 <= 100 ms
     (the baseline server runs the same load for reference).
  c  unthrottled fan-out to 2,000 streams: sserelay's deliveries/s against the
     baseline's (bench/baseline.py), alternating, same run (>= 80% of baseline).
  d  90 streams, sserelay against sse-relay-server 1.0.14 (one PostgreSQL
     connection per stream, so 90 is what max_connections=100 allows):
     deliveries/s and p99, unthrottled and at a fixed rate.

With ``--brokers postgres,redis`` (the default) every sserelay run of a, b and c is
repeated with Redis as the bus (``sserelay serve --redis``, events sent with Redis
PUBLISH), back to back with the PostgreSQL run, in the same session.

    .venv/bin/python bench/run.py                  # all scenarios
    .venv/bin/python bench/run.py --only c --repeats 5
    .venv/bin/python bench/run.py --only b --profile   # py-spy the relay
    .venv/bin/python bench/run.py --only bc --brokers redis
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
SSERELAY = ROOT / ".venv" / "bin" / "sserelay"
SSR_VENV = BENCH / ".venv-ssr"
SSR_SPEC = "sse-relay-server[postgres]==1.0.14"
TOOLS_VENV = BENCH / ".venv-tools"
DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
#: sserelay on each bus: the PostgreSQL one keeps its old name (results stay comparable).
SSERELAY_KINDS = {"postgres": "sserelay", "redis": "sserelay-redis"}


@dataclass
class Run:
    """One load run's outcome, as the summary shows it."""

    scenario: str
    server: str
    result: dict[str, Any] | None
    command: str
    error: str | None = None


@dataclass
class Session:
    out: Path
    dsn: str
    profile: bool
    redis: str = REDIS
    #: perf record every server (kernel and C frames too): `perf` must be installed.
    perf: bool = False
    #: Key and channel prefix of this session's relays on Redis (cleaned up at the end).
    redis_prefix: str = ""
    brokers: tuple[str, ...] = ("postgres", "redis")
    #: Seconds to wait, before each load run, for other work on the machine to calm down.
    quiet_wait: float = 0.0
    runs: list[Run] = field(default_factory=list)
    checks: list[tuple[str, str, bool | None]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def check(self, name: str, measured: str, ok: bool | None) -> None:
        """Record a target: ok None means informational (no target)."""
        self.checks.append((name, measured, ok))

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.append(text)


# -- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(0.5)
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.1)
    raise TimeoutError(f"server did not listen on {port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> bool:
    """End a process we started and its session; True if it ended on SIGTERM alone."""
    clean = True
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            clean = False
    # The session may hold children (loadgen's client processes): end them too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return clean


def server_command(
    kind: str, port: int, session: Session
) -> tuple[list[str], dict[str, str], Path]:
    env = dict(os.environ)
    dsn = session.dsn
    if kind == "sserelay":
        cmd = [str(SSERELAY), "serve", "--port", str(port), "--dsn", dsn]
        env["LOG_LEVEL"] = "WARNING"
        if os.environ.get("SSERELAY_SRC"):
            # The relay from an exported tree rather than this checkout (see sserelay-ref).
            cmd[:1] = [str(PYTHON), "-m", "sserelay"]
            env["PYTHONPATH"] = os.environ["SSERELAY_SRC"]
        return cmd, env, ROOT
    if kind == "sserelay-ref":
        # Before/after in one run: the same relay from another source tree (e.g.
        # `git archive <commit> src | tar -x -C /tmp/ref`), named by SSERELAY_REF_SRC.
        ref = os.environ.get("SSERELAY_REF_SRC")
        if not ref:
            raise RuntimeError("sserelay-ref needs SSERELAY_REF_SRC=<a src/ directory>")
        cmd = [str(PYTHON), "-m", "sserelay", "serve", "--port", str(port), "--dsn", dsn]
        env.update(LOG_LEVEL="WARNING", PYTHONPATH=ref)
        return cmd, env, ROOT
    if kind == "sserelay-redis":
        cmd = [str(SSERELAY), "serve", "--port", str(port), "--redis", session.redis]
        env.update(LOG_LEVEL="WARNING", SSERELAY_REDIS_PREFIX=session.redis_prefix)
        return cmd, env, ROOT
    if kind == "baseline":
        cmd = [str(PYTHON), str(BENCH / "baseline.py"), "--port", str(port), "--dsn", dsn]
        return cmd, env, ROOT
    if kind == "nchan":
        import nchan

        conf = nchan.write_config(session.out / f"nginx-{port}", "127.0.0.1", port)
        return nchan.command(conf), env, ROOT
    if kind.startswith(("sserelay-workers-", "sserelay-ref-workers-")):
        # sserelay[-ref]-workers-<N>: --workers N on PostgreSQL (see scale.py).
        workers = kind.rsplit("-", 1)[1]
        cmd = [str(SSERELAY), "serve", "--port", str(port), "--dsn", dsn, "--workers", workers]
        env["LOG_LEVEL"] = "WARNING"
        ref = kind.startswith("sserelay-ref-")
        src = os.environ.get("SSERELAY_REF_SRC" if ref else "SSERELAY_SRC")
        if ref and not src:
            raise RuntimeError(f"{kind} needs SSERELAY_REF_SRC=<a src/ directory>")
        if src:
            cmd[:1] = [str(PYTHON), "-m", "sserelay"]
            env["PYTHONPATH"] = src
        return cmd, env, ROOT
    if kind == "ssr":
        cmd = [str(SSR_VENV / "bin" / "sse-relay-server"), "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
        # It reads ./.env: run it where there is none. Without RELAY_USE_PG it picks Redis.
        env.update(DATABASE_URL=dsn, RELAY_USE_PG="True", LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)
        return cmd, env, BENCH / "results"
    raise ValueError(kind)


@contextlib.contextmanager
def server(session: Session, kind: str, name: str) -> Iterator[tuple[int, int]]:
    """Start ``kind`` on a free port; yield (port, pid); always stop it."""
    port = free_port()
    cmd, env, cwd = server_command(kind, port, session)
    logfile = (session.out / f"{name}.server.log").open("wb")
    session.say(f"$ {shlex.join(cmd)}")
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    profiler = perf = None
    profile = session.out / f"{name}.pyspy.txt"
    perf_data = session.out / f"{name}.perf.data"
    try:
        wait_port(port, proc, 20)
        time.sleep(0.5)  # the listener connects right after the socket is bound
        if session.profile and kind not in ("ssr", "nchan"):
            workers = "-workers-" in kind
            profiler = start_profiler(session, proc.pid, profile, subprocesses=workers)
        if session.perf:
            perf = start_perf(session, proc.pid, perf_data)
        yield port, proc.pid
    finally:
        if profiler is not None:
            stop_profiler(session, profiler, profile)
        if perf is not None:
            stop_perf(session, perf, perf_data)
        if not stop(proc):
            session.say(f"!! {name}: the server did not exit within 10 s of SIGTERM; killed")
        logfile.close()


def start_profiler(
    session: Session, pid: int, out: Path, *, subprocesses: bool = False
) -> subprocess.Popen[bytes] | None:
    pyspy = TOOLS_VENV / "bin" / "py-spy"
    cmd = [str(pyspy), "record", "--pid", str(pid), "--format", "raw", "-o", str(out)]
    cmd += ["--rate", "100" if subprocesses else "200", "--nonblocking", "--duration", "600"]
    if subprocesses:
        cmd.append("--subprocesses")  # --workers N: every worker, not the supervisor alone
    session.say(f"$ {shlex.join(cmd)}")
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def interrupt(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGINT ``proc`` (py-spy and perf write their output then) and wait for it; past
    ``timeout``, stop it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc)


def stop_profiler(session: Session, proc: subprocess.Popen[bytes], out: Path) -> None:
    interrupt(proc, 20)
    if out.exists():
        top = profile_top(out)
        out.with_suffix(".top.txt").write_text(top)
        session.say(top)


def start_perf(session: Session, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """perf record of ``pid`` and the children it has now (nginx's worker, --workers')."""
    import psutil

    pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    cmd = ["perf", "record", "-F", "499", "-g", "-p", ",".join(map(str, pids)), "-o", str(out)]
    session.say(f"$ {shlex.join(cmd)}")
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_perf(session: Session, proc: subprocess.Popen[bytes], out: Path) -> None:
    """Stop perf (it writes on SIGINT) and keep its top symbols: kernel against user."""
    interrupt(proc, 30)
    if not out.exists():
        return
    texts = []
    for sort, limit in (("dso", "0.5"), ("dso,sym", "0.7")):
        report = ["perf", "report", "-i", str(out), "--stdio", "--no-children"]
        report += ["--sort", sort, "-g", "none", "--percent-limit", limit]
        try:
            texts.append(subprocess.run(report, capture_output=True, timeout=120).stdout.decode())
        except (OSError, subprocess.SubprocessError) as exc:
            texts.append(f"perf report failed: {exc}")
    text = "\n".join(texts)
    top = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    out.with_suffix(".top.txt").write_text(top + "\n")
    session.say(f"perf {out.name}:\n{top[:3000]}")
    out.unlink()  # the raw data is large; the summary is kept


def profile_top(raw: Path, n: int = 12) -> str:
    """Where the time went, from py-spy's collapsed stacks: self and inclusive shares."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"py-spy {raw.name}: {total} samples", "self:"]
    lines += [f"  {k / total:6.1%}  {name}" for name, k in own.most_common(n)]
    lines += ["inclusive:"]
    lines += [f"  {k / total:6.1%}  {name}" for name, k in inclusive.most_common(n)]
    return "\n".join(lines) + "\n"


def loadgen(session: Session, scenario: str, kind: str, name: str, args: list[str]) -> Run:
    """Run one load against a fresh ``kind`` server; never raises."""
    if session.quiet_wait:
        wait_quiet(session, session.quiet_wait)
    try:
        with server(session, kind, name) as (port, pid):
            path = "/bench_ssr" if kind == "ssr" else f"/events/bench_{scenario}"
            template = [str(PYTHON), str(BENCH / "loadgen.py")]
            template += ["--url", f"http://127.0.0.1:$PORT{path}", "--server-pid", "$PID"]
            template += ["--dsn", session.dsn, "--label", name, *args]
            template += ["--json-out", str(session.out / "results.jsonl")]
            if kind == "ssr":
                template += ["--ready", "pg"]
            if kind == "sserelay-redis":
                template += ["--redis", session.redis, "--redis-prefix", session.redis_prefix]
            if kind == "nchan":
                template += ["--publish-url", "http://127.0.0.1:$PORT/pub/{channel}"]
                template += ["--ready", "nchan"]
            shown = shlex.join(template)
            cmd = [a.replace("$PORT", str(port)).replace("$PID", str(pid)) for a in template]
            session.say(f"$ {shown}")
            timeout = deadline_of(args)
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                return Run(scenario, kind, None, shown, f"loadgen exceeded {timeout:.0f} s")
            finally:
                stop(proc, grace=2)  # on a timeout, and any client process left behind
            text = stdout.decode()
            (session.out / f"{name}.loadgen.txt").write_text(text + stderr.decode())
            lines = [line for line in text.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                err = stderr.decode().strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                return Run(scenario, kind, None, shown, err[0])
            session.say("\n".join(line for line in text.splitlines() if not line.startswith("{")))
            return Run(scenario, kind, json.loads(lines[-1]), shown)
    except Exception as exc:  # a failed scenario must not stop the others
        return Run(scenario, kind, None, name, f"{type(exc).__name__}: {exc}")


def wait_quiet(session: Session, budget: float, busy_below: float = 0.3) -> None:
    """Wait (at most ``budget`` s) until under ``busy_below`` of the machine's CPU is in use.

    The machine is shared: another user's test run can take a core for minutes. This
    only waits; each result still records how busy the machine was while it ran.
    """
    import psutil

    deadline = time.monotonic() + budget
    busy = psutil.cpu_percent(interval=2) / 100
    while busy >= busy_below and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=2) / 100
    if busy >= busy_below:
        session.say(f"(machine still {busy:.0%} busy after waiting {budget:.0f} s; running anyway)")


def deadline_of(args: list[str]) -> float:
    """The hard bound passed to loadgen (``--deadline``), plus time to print its report."""
    return float(args[args.index("--deadline") + 1]) + 30


# -- the scenarios -------------------------------------------------------------------


def scenario_a(session: Session) -> None:
    """10,000 streams on one process: peak RSS and PostgreSQL connections."""
    session.say("\n== a: 10,000 concurrent streams on one sserelay process")
    args = ["--clients", "10000", "--procs", "2", "--source-addrs", "4"]
    args += ["--hold", "5", "--rate", "2", "--duration", "5", "--deadline", "240"]
    for broker in session.brokers:
        kind = SSERELAY_KINDS[broker]
        run = record(session, loadgen(session, "a", kind, f"a-{kind}-10k", args))
        r = run.result
        tag = f"a ({broker})"
        if r is None:
            session.check(f"{tag}: 10,000 streams held", run.error or "failed", False)
            continue
        conns_of = r["redis_connections"] if broker == "redis" else r["pg_connections"]
        listeners = conns_of["by_application_name"].get("sserelay-listener", 0)
        held = r["connected"] == 10000 and r["lost"] == 0
        measured = f"{r['connected']} connected, lost {r['lost']}"
        session.check(f"{tag}: 10,000 streams held", measured, held)
        rss = r["server_rss_mb"]["peak"]
        session.check(f"{tag}: peak RSS <= 150 MB", f"{rss} MB", rss <= 150)
        # Only the listener subscribes; other connections (the log reader pool) are shown.
        names = ", ".join(
            f"{n} {name}" for name, n in sorted(conns_of["by_application_name"].items())
        )
        conns = f"{listeners} sserelay-listener; {conns_of['total']} in all ({names})"
        check = f"{tag}: exactly one listening connection for 10,000 streams"
        session.check(check, conns, listeners == 1)


def scenario_b(session: Session) -> None:
    """5,000 streams, 10 events/s for 20 s: loss and latency."""
    session.say("\n== b: 5,000 streams, one channel, 10 events/s for 20 s")
    args = ["--clients", "5000", "--procs", "2", "--rate", "10", "--duration", "20"]
    args += ["--drain-timeout", "15", "--deadline", "240"]
    runs = {
        broker: record(
            session,
            loadgen(session, "b", SSERELAY_KINDS[broker], f"b-{SSERELAY_KINDS[broker]}-5k", args),
        )
        for broker in session.brokers
    }
    if "postgres" in session.brokers:
        record(session, loadgen(session, "b", "baseline", "b-baseline-5k", args))
    for broker, run in runs.items():
        r = run.result
        tag = f"b ({broker})"
        if r is None:
            session.check(f"{tag}: 0 lost at 5,000 x 10/s", run.error or "failed", False)
            continue
        counts = f"{r['delivered']} of {r['expected']}, lost {r['lost']}, dup {r['duplicated']}"
        exact = r["lost"] == 0 and r["duplicated"] == 0 and r["connected"] == 5000
        session.check(f"{tag}: 0 lost at 5,000 x 10/s", counts, exact)
        p99 = r["latency_ms"]["p99"]
        session.check(f"{tag}: p99 <= 100 ms", f"{p99} ms", p99 is not None and p99 <= 100)


def scenario_c(session: Session, repeats: int) -> None:
    """Unthrottled fan-out, sserelay against the baseline, alternating."""
    session.say(f"\n== c: unthrottled fan-out to 2,000 streams, {repeats} rounds each")
    args = ["--clients", "2000", "--procs", "1", "--count", "600"]
    args += ["--drain-timeout", "60", "--deadline", "240"]
    kinds = ["baseline", *(SSERELAY_KINDS[b] for b in session.brokers)]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(repeats):
        order = kinds if i % 2 == 0 else kinds[::-1]
        for kind in order:
            run = record(session, loadgen(session, "c", kind, f"c-{kind}-2k-{i + 1}", args))
            if run.result is not None:
                rates[kind].append(run.result["deliveries_per_s"])
                cpu[kind].append(run.result["server_cpu_us_per_delivery"])
    if rates.get("sserelay-redis"):
        ours = statistics.median(rates["sserelay-redis"])
        us = statistics.median(cpu["sserelay-redis"])
        measured = f"{ours:,.0f} deliveries/s, {us:.2f} us/delivery (medians of {repeats})"
        if rates.get("sserelay"):
            pg = statistics.median(rates["sserelay"])
            measured += f"; {ours / pg:.0%} of sserelay on PostgreSQL ({pg:,.0f}/s)"
        session.check("c (redis): sserelay on Redis", measured, None)
    if not rates.get("sserelay") or not rates["baseline"]:
        if "postgres" in session.brokers:
            session.check("c: >= 80% of baseline deliveries/s", "runs failed", False)
        return
    ours, base = statistics.median(rates["sserelay"]), statistics.median(rates["baseline"])
    ratio = ours / base
    cpu_ratio = statistics.median(cpu["baseline"]) / statistics.median(cpu["sserelay"])
    measured = f"{ours:,.0f} vs {base:,.0f} /s (medians of {repeats}) = {ratio:.0%}"
    session.check("c: >= 80% of baseline deliveries/s", measured, ratio >= 0.8)
    # Less sensitive to what else runs on the machine: CPU the server spent per delivery.
    ours_cpu, base_cpu = statistics.median(cpu["sserelay"]), statistics.median(cpu["baseline"])
    measured = (
        f"{ours_cpu:.2f} vs {base_cpu:.2f} us/delivery (medians): sserelay does {cpu_ratio:.0%}"
        " of the baseline's deliveries per CPU-second"
    )
    session.check("c: server CPU per delivery", measured, None)


def pg_headroom(dsn: str) -> int:
    """Connections PostgreSQL can still accept from a superuser."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity"
        ).fetchone()
    return int(row[0]) if row else 0


def ensure_venv(session: Session, venv: Path, tool: str, packages: list[str]) -> bool:
    """Create ``venv`` with ``packages`` unless ``venv/bin/tool`` is already there."""
    if (venv / "bin" / tool).exists():
        return True
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", *packages],
    ):
        session.say(f"$ {shlex.join(cmd)}")
        try:
            subprocess.run(cmd, check=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as exc:
            session.say(f"cannot install {' '.join(packages)}: {exc}")
            return False
    return True


def scenario_d(session: Session) -> None:
    """90 streams: sserelay against sse-relay-server 1.0.14."""
    session.say("\n== d: sserelay vs sse-relay-server 1.0.14 at 90 streams")
    # It imports redis even when told to use PostgreSQL, so redis goes in too.
    if not ensure_venv(session, SSR_VENV, "sse-relay-server", [SSR_SPEC, "redis"]):
        session.check("d: side by side with sse-relay-server", "not installed", None)
        return
    # sse-relay-server holds one connection per stream; loadgen publishes on one more and
    # listens directly on another.
    clients = min(90, pg_headroom(session.dsn) - 3)
    if clients < 90:
        session.say(f"only {clients} PostgreSQL connections free: running d at {clients} streams")
    common = ["--clients", str(clients), "--procs", "1", "--deadline", "200"]
    loads = {
        "unthrottled": ["--count", "2000", "--drain-timeout", "60"],
        "rate": ["--rate", "100", "--duration", "10", "--drain-timeout", "30"],
    }
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for load, extra in loads.items():
        for kind in ("sserelay", "ssr"):
            name = f"d-{kind}-{clients}-{load}"
            run = record(session, loadgen(session, "d", kind, name, [*common, *extra]))
            if run.result is not None:
                out[kind, load] = run.result
    for load in loads:
        ours, theirs = out.get(("sserelay", load)), out.get(("ssr", load))
        if ours is None or theirs is None:
            session.check(f"d ({load}): ratios", "a run failed", None)
            continue
        rate = ours["deliveries_per_s"] / max(theirs["deliveries_per_s"], 1)
        p99 = ours["latency_ms"]["p99"] / max(theirs["latency_ms"]["p99"], 0.001)
        measured = (
            f"deliveries/s {ours['deliveries_per_s']:,} / {theirs['deliveries_per_s']:,}"
            f" = {rate:.2f}x; p99 {ours['latency_ms']['p99']} / {theirs['latency_ms']['p99']} ms"
            f" = {p99:.3f}; PG connections {ours['pg_connections']['total']}"
            f" / {theirs['pg_connections']['total']}; published at"
            f" {ours['published'] / max(ours['publish_seconds'], 1e-6):,.0f}"
            f" / {theirs['published'] / max(theirs['publish_seconds'], 1e-6):,.0f} events/s"
        )
        session.check(f"d ({load}): sserelay/ssr", measured, None)


# -- reporting -----------------------------------------------------------------------


def record(session: Session, run: Run) -> Run:
    session.runs.append(run)
    if run.error:
        session.say(f"!! {run.scenario}/{run.server}: {run.error}")
    return run


COLUMNS = (
    "run",
    "clients",
    "load",
    "delivered / expected",
    "lost",
    "dup",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "bus alone p99 ms",
    "peak RSS MB",
    "server CPU",
    "server us/delivery",
    "bus conns",
    "client CPU",
    "other CPU",
)


def row(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    return [
        r["label"],
        str(r["connected"]),
        r["mode"],
        f"{r['delivered']:,} / {r['expected']:,}",
        str(r["lost"]),
        str(r["duplicated"]),
        f"{r['deliveries_per_s']:,}",
        str(lat["p50"]),
        str(lat["p99"]),
        str(lat["max"]),
        str(r["pg_direct_latency_ms"]["p99"]),
        str(r["server_rss_mb"]["peak"]),
        f"{r['server_cpu_share']:.0%}",
        str(r["server_cpu_us_per_delivery"]),
        str((r.get("redis_connections") or r["pg_connections"]).get("total")),
        f"{r['client_cpu_share_max']:.0%}" + (" SAT" if r["client_saturated"] else ""),
        f"{r['other_cpu_cores']:.2f} cores",
    ]


def summary(session: Session, started: float, load: tuple[list[float], list[float]]) -> str:
    cells = [list(COLUMNS), ["---"] * len(COLUMNS)]
    for run in session.runs:
        if run.result is None:
            failed = [f"{run.scenario}/{run.server}", f"failed: {run.error}"]
            cells.append(failed + [""] * (len(COLUMNS) - 2))
        else:
            cells.append(row(run.result))
    lines = ["| " + " | ".join(c) + " |" for c in cells]
    lines += ["", "| check | measured | met |", "|---|---|---|"]
    for name, measured, ok in session.checks:
        verdict = "-" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {measured} | {verdict} |")
    lines += [
        "",
        f"load average (1/5/15 min) before: {fmt_load(load[0])}, after: {fmt_load(load[1])};"
        f" {os.cpu_count()} cores; {time.time() - started:.0f} s in all",
    ]
    return "\n".join(lines)


def source_state() -> str:
    """The commit measured, and whether src/ had uncommitted changes (read-only git)."""
    if os.environ.get("SSERELAY_SRC") or os.environ.get("SSERELAY_REF_SRC"):
        trees = ", ".join(
            f"{name}={os.environ[name]}"
            for name in ("SSERELAY_SRC", "SSERELAY_REF_SRC")
            if os.environ.get(name)
        )
        return f"exported trees: {trees} (checkout at {checkout_state()})"
    return checkout_state()


def checkout_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        ).stdout.decode()
        dirty = subprocess.run(
            ["git", "status", "--short", "--", "src"], cwd=ROOT, capture_output=True, timeout=10
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = len(dirty.splitlines())
    return head.strip() + (f" + {changed} uncommitted file(s) in src/" if changed else "")


def raise_nofile(say: Any) -> None:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit, for this process and every server and
    load generator it starts (they inherit it). The hard limit caps what one process may
    hold (20,000 here): scenario w spreads 100,000 streams over processes for that reason."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    say(f"open files per process: soft limit {soft} -> {hard} (the hard limit)")


def fmt_load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="abcd",
        help="scenarios to run, e.g. 'bc'; also n (against nchan) and w (100,000 streams,"
        " --workers), which are not in the default set",
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds per server in c and n")
    parser.add_argument(
        "--loads", default="123", help="n: which loads (1 CPU, 2 latency, 3 memory)"
    )
    parser.add_argument(
        "--servers",
        default="sserelay,nchan,baseline",
        help="n: the servers, in the first round's order; sserelay-ref is the relay from"
        " SSERELAY_REF_SRC (before/after a change in one run), sserelay-redis the relay on"
        " Redis",
    )
    parser.add_argument("--streams", type=int, default=100_000, help="w: streams in all")
    parser.add_argument("--workers", type=int, default=7, help="w: sserelay --workers N")
    parser.add_argument("--dsn", default=os.environ.get("SSERELAY_BENCH_DSN", DSN))
    parser.add_argument("--profile", action="store_true", help="py-spy each relay/baseline")
    parser.add_argument(
        "--perf", action="store_true", help="perf record each server (kernel frames too)"
    )
    parser.add_argument(
        "--brokers",
        default="postgres,redis",
        help="buses to run sserelay on in a, b and c: postgres, redis or both (comma-separated)",
    )
    parser.add_argument("--redis", default=os.environ.get("SSERELAY_BENCH_REDIS", REDIS))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each load run, wait up to this many seconds for the machine's CPU to be"
        " under 30%% busy (it is shared); 0 disables",
    )
    args = parser.parse_args()
    raise_nofile(print)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    brokers = tuple(b.strip() for b in args.brokers.split(",") if b.strip())
    if not set(brokers) <= set(SSERELAY_KINDS):
        parser.error(f"--brokers takes postgres and/or redis, not {args.brokers!r}")
    session = Session(
        out=out,
        dsn=args.dsn,
        profile=args.profile,
        perf=args.perf,
        quiet_wait=args.quiet_wait,
        redis=args.redis,
        redis_prefix=f"sserelay-bench-{os.getpid()}-{time.time_ns() % 10**6}:",
        brokers=brokers,
    )
    if args.profile:
        session.profile = ensure_venv(session, TOOLS_VENV, "py-spy", ["py-spy"])
    started = time.time()
    load_before = list(os.getloadavg())
    session.say(f"results in {out}")
    source = f"sserelay source: {source_state()}"
    session.say(source)
    for key in args.only:
        if key == "a":
            scenario_a(session)
        elif key == "b":
            scenario_b(session)
        elif key == "c":
            scenario_c(session, args.repeats)
        elif key == "d":
            scenario_d(session)
        elif key == "n":
            import versus_nchan

            servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
            versus_nchan.scenario_n(session, args.repeats, loadgen, record, args.loads, servers)
        elif key == "w":
            import scale

            ref = "sserelay-ref" in args.servers.split(",")
            scale.scenario_w(session, args.streams, args.workers, loadgen, record, ref=ref)
    text = source + "\n\n" + summary(session, started, (load_before, list(os.getloadavg())))
    session.say("\n" + text)
    (out / "summary.md").write_text(text + "\n")
    (out / "session.log").write_text("\n".join(session.log) + "\n")
    return 0 if all(ok is not False for _, _, ok in session.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
