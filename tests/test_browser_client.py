"""The browser client (``sserelay.js``) in headless Chromium against a real relay process.

The page comes from another origin than the relay (a page server on its own port; the relay
allows it by ``ALLOWED_ORIGINS``) and imports the module from the relay, as a site would.
Tokens come from the page server (minted with the relay's secret); the relay sits behind a
recording proxy, so a test can read every request the relay saw. Needs Debian's ``chromium``
and ``chromium-driver``; skipped with the reason when they are missing, except in CI.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

import sserelay
from browser import (
    SECRET,
    Browser,
    PageServer,
    RecordingProxy,
    RelayServer,
    datas,
    states,
    wait_for,
)
from sserelay.bus.postgres.log import prune

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.timeout(300),
]


@dataclass
class Setup:
    dsn: str
    relay: RelayServer
    proxy: RecordingProxy
    pages: PageServer
    browser: Browser

    def publish(self, channel: str, data: object, event: str | None = None) -> str:
        return str(sserelay.publish(self.dsn, channel, data, event=event))

    def stream_requests(self) -> list[str]:
        return [r for r in self.proxy.requests() if r.startswith("GET /events")]


@pytest.fixture
def setup(durable_dsn: str, tmp_path: Path) -> Iterator[Setup]:
    browser = Browser()  # first: skips (or fails in CI) when Chromium is missing
    relay = proxy = pages = None
    try:
        relay = RelayServer(durable_dsn, tmp_path / "relay.log")
        proxy = RecordingProxy(relay.port)
        pages = PageServer(proxy.url)
        relay.env.update(
            SSERELAY_JWT_SECRET=SECRET,
            ALLOWED_ORIGINS=pages.origin,
            SSERELAY_RETRY_MS="300",
            SSERELAY_PUBLIC_CHANNELS="lobby",  # the documented snippets use no token
        )
        relay.start()
        yield Setup(durable_dsn, relay, proxy, pages, browser)
    finally:
        browser.quit()
        if pages is not None:
            pages.close()
        if proxy is not None:
            proxy.close()
        if relay is not None:
            relay.stop()


def live(seen: dict[str, object]) -> bool:
    return "live" in states(seen)  # type: ignore[arg-type]


def test_events_arrive_as_with_eventsource(setup: Setup) -> None:
    """Named, multi-line and unicode events, durable and raw, read by the client over fetch,
    by its EventSource fallback, and by a plain EventSource on the same page: the same."""
    browser = setup.browser
    channel = "news"
    tab = browser.open(setup.pages.page(channel, plain="1"))
    fallback = browser.open(setup.pages.page(channel, transport="eventsource"))
    for each in (tab, fallback):
        browser.wait(each, live, "the client goes live")
    browser.wait(tab, lambda s: s.get("plainOpen"), "the plain EventSource opens")

    setup.publish(channel, {"text": "hello"}, event="chat")
    setup.publish(channel, "line 1\nline 2\r\nline 3", event="multi")
    setup.publish(channel, "ünïcödé ✓ 日本 😀")
    with psycopg.connect(setup.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, "a raw NOTIFY: no id"))
    setup.publish(channel, "last")

    expected = [
        ("chat", '{"text":"hello"}'),
        ("multi", "line 1\nline 2\nline 3"),
        ("message", "ünïcödé ✓ 日本 😀"),
        ("message", "a raw NOTIFY: no id"),
        ("message", "last"),
    ]
    seen = browser.wait(tab, lambda s: len(s["plain"]) >= 5 and len(s["events"]) >= 5, "events")
    ours = [(e["type"], e["data"], e["lastEventId"]) for e in seen["events"]]
    plain = [(e["type"], e["data"], e["lastEventId"]) for e in seen["plain"]]
    assert ours == plain
    assert [(t, d) for t, d, _ in ours] == expected
    assert [e["id"] for e in seen["events"]] == ["1", "2", "3", None, "4"]
    assert {e["channel"] for e in seen["events"]} == {channel}

    other = browser.wait(fallback, lambda s: len(s["events"]) >= 5, "the fallback's events")
    assert [(e["type"], e["data"], e["lastEventId"]) for e in other["events"]] == plain


@pytest.mark.parametrize("doc", ["README.md", "docs/browser.md"])
def test_documented_snippet(setup: Setup, doc: str) -> None:
    """The client's first example in the docs, as written (but the relay's URL)."""
    text = (ROOT / doc).read_text()
    snippet = re.search(r"```html\n(<script type=\"module\">.*?)```", text, re.S)
    assert snippet, f"no module snippet in {doc}"
    html = snippet.group(1).replace("http://127.0.0.1:8001", setup.proxy.url)
    browser = setup.browser
    browser.open(setup.pages.add("/snippet.html", "<!doctype html>" + html))
    wait_for(lambda: '"status" "live"' in browser.console(), "the snippet logs its status")
    setup.publish("lobby", "Hello, world!")
    wait_for(lambda: '"message" "Hello, world!"' in browser.console(), "the event is logged")


def test_forbidden_stops_and_says_why(setup: Setup) -> None:
    """A 403 (the token does not cover the channel) ends the subscription: no retry loop."""
    tab = setup.browser.open(setup.pages.page("secret", grant="other"))
    seen = setup.browser.wait(tab, lambda s: "closed" in states(s), "the client stops")
    closed = seen["statuses"][-1]
    assert closed["status"] == 403
    errors = [s for s in seen["statuses"] if s["state"] == "error"]
    assert errors[0]["status"] == 403 and "not allow" in errors[0]["error"], errors
    assert len(setup.stream_requests()) == 1


def test_token_expiring_every_5s(setup: Setup) -> None:
    """Tokens live 5 s while events flow: the stream goes on over fresh tokens, with no event
    lost or repeated, and no token in any URL the relay saw."""
    tab = setup.browser.open(setup.pages.page("ticks", ttl="5"))
    setup.browser.wait(tab, live, "live")
    stop = threading.Event()
    sent: list[str] = []

    def publish_steadily() -> None:
        while not stop.is_set():
            sent.append(setup.publish("ticks", f"tick {len(sent)}"))
            stop.wait(0.05)  # pacing, not synchronisation: events flow across the refreshes

    publisher = threading.Thread(target=publish_steadily, daemon=True)
    publisher.start()
    try:
        # Three refreshes: four tokens minted, each used for one stream.
        wait_for(lambda: setup.pages.minted >= 4, "three token refreshes", timeout=60)
    finally:
        stop.set()
        publisher.join()
    expected = [f"tick {i}" for i in range(len(sent))]
    seen = setup.browser.wait(tab, lambda s: len(s["events"]) >= len(sent), "every tick")
    assert datas(seen) == expected
    assert [e["id"] for e in seen["events"]] == sent
    assert seen["gaps"] == [] and seen["missed"] == []

    streams = setup.stream_requests()
    assert len(streams) >= 4, streams
    for head in setup.proxy.requests():
        line = head.split("\r\n", 1)[0]
        assert "token" not in line.lower(), line
    for head in streams:
        assert re.search(r"\r\nauthorization: bearer ", head, re.I), head
    assert all(re.search(r"\r\nlast-event-id: \d+\r\n", h, re.I) for h in streams[1:]), streams
    assert "error" not in states(seen), seen["statuses"]


def test_relay_restart_resumes_and_pruned_log_reports_missed(setup: Setup) -> None:
    """The relay is killed while events are published: the page resumes and shows each once.
    Killed again, and the log pruned meanwhile: the page gets ``missed``, then what is left."""
    tab = setup.browser.open(setup.pages.page("room"))
    setup.browser.wait(tab, live, "live")
    for i in range(3):
        setup.publish("room", f"before {i}")
    setup.browser.wait(tab, lambda s: len(s["events"]) == 3, "the first events")

    setup.relay.stop(signal.SIGKILL)
    setup.browser.wait(tab, lambda s: states(s)[-1] != "live", "the page sees the outage")
    for i in range(3):
        setup.publish("room", f"during {i}")
    setup.relay.start()
    expected = [f"before {i}" for i in range(3)] + [f"during {i}" for i in range(3)]
    seen = setup.browser.wait(tab, lambda s: len(s["events"]) >= 6, "the missed events")
    assert datas(seen) == expected
    setup.browser.wait(tab, lambda s: states(s)[-1] == "live", "live again")

    setup.relay.stop(signal.SIGKILL)
    setup.browser.wait(tab, lambda s: states(s)[-1] != "live", "the second outage")
    for i in range(4):
        setup.publish("room", f"pruned {i}")
    assert prune(setup.dsn, max_count=1) == 9
    setup.relay.start()
    seen = setup.browser.wait(tab, lambda s: s["missed"] and len(s["events"]) >= 7, "missed")
    assert seen["missed"] == [
        {"channel": "room", "after": 6, "resumed_at": 9, "reason": "retention"}
    ]
    assert datas(seen) == [*expected, "pruned 3"]
    assert seen["gaps"] == [], "missed explains the jump: no gap reported"


def test_ten_tabs_share_one_stream(setup: Setup) -> None:
    """Ten tabs with ``shared: true`` hold one stream; when the leader tab closes another
    takes over from its last id: every tab gets every event once, in order."""
    browser = setup.browser
    url = setup.pages.page("shared", shared="1")
    tabs = [browser.open(url) for _ in range(10)]
    for tab in tabs:
        browser.wait(tab, live, "every tab is live (its own stream or the leader's)")
    wait_for(lambda: setup.relay.metric("sserelay_streams_open") == 1, "one stream open")

    for i in range(5):
        setup.publish("shared", f"first {i}")
    first = [f"first {i}" for i in range(5)]
    for tab in tabs:
        browser.wait(tab, lambda s: len(s["events"]) >= 5, "the first events in every tab")
    leaders = [t for t in tabs if browser.seen(t)["statuses"][-1]["leader"]]
    assert len(leaders) == 1, "one leader"
    assert setup.relay.metric("sserelay_streams_open") == 1

    closed_at = time.time() * 1000
    browser.close_tab(leaders[0])
    for i in range(5):  # published while the leadership moves
        setup.publish("shared", f"second {i}")
    expected = [*first, *(f"second {i}" for i in range(5))]
    for tab in browser.tabs:
        seen = browser.wait(tab, lambda s: len(s["events"]) >= 10, "every event in every tab")
        assert datas(seen) == expected
    new = [t for t in browser.tabs if browser.seen(t)["statuses"][-1]["leader"]]
    assert len(new) == 1, "one new leader"
    taken = [
        s["at"] for s in browser.seen(new[0])["statuses"] if s["leader"] and s["at"] > closed_at
    ]
    print(f"takeover: the new leader connected {taken[0] - closed_at:.0f} ms after the close")
    wait_for(lambda: setup.relay.metric("sserelay_streams_open") == 1, "one stream again")
    requests = setup.stream_requests()
    assert len(requests) == 2, requests
    assert re.search(r"\r\nlast-event-id: 5\r\n", requests[1], re.I), requests[1]


def test_offline_pauses_online_resumes_close_ends(setup: Setup) -> None:
    """The browser goes offline (DevTools network emulation): the client drops its stream and
    waits; back online it resumes from its last id at once. ``sub.close()`` ends it all."""
    browser = setup.browser
    tab = browser.open(setup.pages.page("net"))
    browser.wait(tab, live, "live")
    setup.publish("net", "before")
    browser.wait(tab, lambda s: datas(s) == ["before"], "the first event")

    conditions = {"latency": 0, "download_throughput": -1, "upload_throughput": -1}
    browser.driver.set_network_conditions(offline=True, **conditions)
    browser.wait(tab, lambda s: states(s)[-1] == "offline", "offline")
    wait_for(lambda: setup.relay.metric("sserelay_streams_open") == 0, "the stream dropped")
    setup.publish("net", "while offline")
    browser.driver.set_network_conditions(offline=False, **conditions)
    seen = browser.wait(tab, lambda s: len(s["events"]) >= 2, "the event sent while offline")
    assert datas(seen) == ["before", "while offline"]
    assert states(seen)[-1] == "live"
    assert len(setup.stream_requests()) == 2, "one reconnect, when the browser came online"

    browser.driver.execute_script("window.sub.close()")
    browser.wait(tab, lambda s: states(s)[-1] == "closed", "closed")
    wait_for(lambda: setup.relay.metric("sserelay_streams_open") == 0, "no stream left")
