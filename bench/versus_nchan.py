"""Scenario n of bench/run.py: one sserelay process, one nchan worker and the raw asyncio
baseline, side by side in one run, alternating, on three loads:

  1  2,000 streams, 600 events unthrottled: server CPU per delivery
     (target: sserelay at most 0.8x nchan's)
  2  5,000 streams on one channel, 10 events/s for 20 s: p50 / p99
     (target: sserelay's p99 at or below nchan's)
  3  10,000 streams, 4 events/s for 10 s: RSS per stream and p99
     (target: sserelay's RSS per stream at most 0.6x nchan's)

sserelay runs on PostgreSQL (events sent with pg_notify, as for the baseline); nchan gets
each event by HTTP POST on a keep-alive connection (its own publishing path). Every round
runs each load on each server, in an order that rotates from round to round, and the
checks compare medians of the rounds. RSS per stream is (peak RSS while serving - RSS before
the first connection) / streams: nginx's master process and sserelay's imports cancel out,
and what events in flight cost (nchan keeps a copy per subscriber's buffer) counts.

    .venv/bin/python bench/run.py --only n --repeats 3            # about 25 minutes
    .venv/bin/python bench/run.py --only n --repeats 1 --loads 2  # one load, one round
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Callable
from typing import Any

SERVERS = ("sserelay", "nchan", "baseline")

LOADS: dict[str, tuple[str, list[str]]] = {
    "1": (
        "2,000 streams, 600 events unthrottled",
        shlex.split("--clients 2000 --procs 1 --count 600 --drain-timeout 60 --deadline 240"),
    ),
    "2": (
        "5,000 streams x 10 events/s for 20 s",
        shlex.split(
            "--clients 5000 --procs 2 --rate 10 --duration 20 --drain-timeout 15 --deadline 240"
        ),
    ),
    "3": (
        "10,000 streams x 4 events/s for 10 s",
        shlex.split(
            "--clients 10000 --procs 2 --source-addrs 4 --rate 4 --duration 10"
            " --drain-timeout 15 --deadline 240"
        ),
    ),
}


#: Scenario n's targets (issue 13), by load: what is compared, the bound on sserelay /
#: nchan, and the unit.
TARGETS: dict[str, tuple[str, Any, float, str]] = {
    "1": (
        "n1: server CPU per delivery, sserelay / nchan <= 0.8",
        lambda r: r["server_cpu_us_per_delivery"],
        0.8,
        "us",
    ),
    "2": (
        "n2: p99 at 5,000 x 10/s, sserelay / nchan <= 1",
        lambda r: r["latency_ms"]["p99"],
        1.0,
        "ms",
    ),
    "3": (
        "n3: RSS per stream at 10,000, sserelay / nchan <= 0.6",
        lambda r: r["server_rss_kb_per_stream"],
        0.6,
        "KB",
    ),
}


def scenario_n(
    session: Any,
    repeats: int,
    loadgen: Callable[..., Any],
    record: Callable[..., Any],
    loads: str = "123",
    servers: tuple[str, ...] = SERVERS,
) -> None:
    """Run the chosen loads ``repeats`` rounds on each server; record medians and checks."""
    import nchan

    if "nchan" in servers and not nchan.ensure_installed(session.say):
        session.check("n: side by side with nchan", "nginx + nchan not installed", False)
        return
    session.say(f"\n== n: {', '.join(servers)} ({nchan.version()}: 1 worker), {repeats} rounds")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i in range(repeats):
        order = servers[i % len(servers) :] + servers[: i % len(servers)]
        for key in loads:
            what, args = LOADS[key]
            session.say(f"-- round {i + 1}, load {key}: {what}; order {', '.join(order)}")
            for kind in order:
                run = record(
                    session, loadgen(session, f"n{key}", kind, f"n{key}-{kind}-{i + 1}", args)
                )
                if run.result is not None:
                    results.setdefault((key, kind), []).append(run.result)
    for key in loads:
        summarise(session, key, results, servers)


def median_of(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> float | None:
    values = [v for r in runs if (v := get(r)) is not None]
    return statistics.median(values) if values else None


def summarise(
    session: Any,
    key: str,
    results: dict[tuple[str, str], list[dict[str, Any]]],
    servers: tuple[str, ...],
) -> None:
    what, _ = LOADS[key]
    runs = {kind: results.get((key, kind), []) for kind in servers}
    for kind, got in runs.items():
        if not got:
            session.check(f"n{key} ({what}): {kind}", "every run failed", False)
            continue
        lost = sum(r["lost"] for r in got)
        dup = sum(r["duplicated"] for r in got)
        medians = {
            "us/delivery": median_of(got, lambda r: r["server_cpu_us_per_delivery"]),
            "deliveries/s": median_of(got, lambda r: r["deliveries_per_s"]),
            "p50 ms": median_of(got, lambda r: r["latency_ms"]["p50"]),
            "p99 ms": median_of(got, lambda r: r["latency_ms"]["p99"]),
            "peak RSS MB": median_of(got, lambda r: r["server_rss_mb"]["peak"]),
            "KB/stream": median_of(got, lambda r: r["server_rss_kb_per_stream"]),
        }
        shown = "; ".join(f"{k} {v:,.2f}" for k, v in medians.items() if v is not None)
        ok = lost == 0 and dup == 0
        session.check(
            f"n{key} ({what}): {kind}, medians of {len(got)}",
            f"lost {lost}, dup {dup}; {shown}",
            ok if kind != "baseline" else None,
        )
    if runs.get("sserelay") and runs.get("sserelay-ref"):
        before_after(session, key, runs["sserelay"], runs["sserelay-ref"])
    ours, theirs = runs.get("sserelay"), runs.get("nchan")
    if not ours or not theirs:
        return
    if key in TARGETS:
        label, measure, bound, unit = TARGETS[key]
        ratio_check(
            session, label, median_of(ours, measure), median_of(theirs, measure), bound, unit
        )


def before_after(
    session: Any, key: str, after: list[dict[str, Any]], before: list[dict[str, Any]]
) -> None:
    """sserelay (this tree) against sserelay-ref (SSERELAY_REF_SRC): medians, ratios."""
    for label, get in (
        ("us/delivery", lambda r: r["server_cpu_us_per_delivery"]),
        ("p50 ms", lambda r: r["latency_ms"]["p50"]),
        ("p99 ms", lambda r: r["latency_ms"]["p99"]),
        ("KB/stream", lambda r: r["server_rss_kb_per_stream"]),
    ):
        new, old = median_of(after, get), median_of(before, get)
        if new is not None and old:
            measured = f"{new:.2f} / {old:.2f} = {new / old:.2f}x"
            session.check(f"n{key}: {label}, this tree / sserelay-ref", measured, None)


def ratio_check(
    session: Any, name: str, ours: float | None, theirs: float | None, limit: float, unit: str
) -> None:
    if ours is None or not theirs:
        session.check(name, "no measurement", False)
        return
    ratio = ours / theirs
    session.check(name, f"{ours:.2f} / {theirs:.2f} {unit} = {ratio:.2f}x", ratio <= limit)
