"""What the operator's page costs a relay, measured on its parts (docs/admin.md, "Cost").

    .venv/bin/python bench/admin_bench.py

- recording a stream ending (the ring);
- one snapshot's work at 10,000 channels: the rates per channel, the top lists, fitting
  the newest endings into one NOTIFY;
- rendering the page's update (``<main>``) for 10 relays and 300 endings, and its size;
- the fan-out's per-channel event count, against the same loop without it.
"""

from __future__ import annotations

import argparse
import time
import timeit

from sserelay.admin import page
from sserelay.admin.peers import Peers
from sserelay.admin.snapshot import VERSION, Sampler, compact_json, fit, top
from sserelay.core.endings import Endings

CHANNELS = 10_000


def per_call(stmt: object, number: int) -> float:
    """Best of 5 runs, seconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number  # type: ignore[arg-type]


def main() -> None:
    ring = Endings()
    n = 0

    def record() -> None:
        nonlocal n
        n += 1
        ring.record("client_gone", ("room-1",), f"user-{n}", "10.0.0.1")

    print(f"record one ending: {per_call(record, 100_000) * 1e6:.2f} us")

    members = {f"channel-{i}": i % 50 + 1 for i in range(CHANNELS)}
    events = {f"channel-{i}": i * 3 for i in range(CHANNELS)}
    sampler = Sampler()
    sampler.rates(0.0, {"deliveries": 0}, events)
    later = {c: v + 7 for c, v in events.items()}
    clock = iter(range(1, 10**9))

    def snapshot() -> str:
        rates, top_rates = sampler.rates(float(next(clock)), {"deliveries": 10}, later)
        snap = {
            "v": VERSION,
            "relay": "host:1",
            "rates": rates,
            "top_subscribers": top(members.items()),
            "top_rates": top_rates,
        }
        return fit(snap, ring.last())

    text = snapshot()
    seconds = per_call(snapshot, 20)
    print(f"snapshot at {CHANNELS:,} channels: {seconds * 1e3:.2f} ms, {len(text.encode())} bytes")

    peers = Peers("host:0", expiry=10.0)
    now = time.monotonic()
    for r in range(1, 10):
        theirs = Endings()
        for i in range(40):
            theirs.record("slow", (f"room-{i}",), f"user-{i}", "10.0.0.2")
        snap = {"v": VERSION, "relay": f"host:{r}", "streams": 1000, "channels": 100}
        snap["top_subscribers"] = top(members.items())
        fit(snap, theirs.last())
        peers.receive(compact_json({"data": snap}), now)
    html = page.main(peers.view(ring.last(), time.time()))

    def render() -> str:
        return page.main(peers.view(ring.last(), time.time()))

    print(
        f"page update, 10 relays and {len(peers.view(ring.last(), 0)['endings'])} endings: "
        f"{per_call(render, 20) * 1e3:.2f} ms, {len(html.encode()):,} bytes"
    )

    counts: dict[str, int] = {}
    names = [f"channel-{i % 100}" for i in range(1000)]

    def with_count() -> None:
        for name in names:
            counts[name] = counts.get(name, 0) + 1

    def without() -> None:
        for _name in names:
            pass

    extra = (per_call(with_count, 1000) - per_call(without, 1000)) / len(names)
    print(f"per-channel count in the fan-out: {extra * 1e9:.0f} ns per event (not per delivery)")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    main()
