"""The chat example in a real browser (headless Chromium driven by Selenium), under both
deployments:

- ``wsgi``: Django's WSGI server for the pages, ``sserelay serve`` for the streams; the
  relay is killed (SIGKILL) and restarted while messages are posted;
- ``asgi``: Django under uvicorn serves pages and streams; the whole server is killed
  and restarted while messages are saved (by this process, through the same model).

Both: two pages in one room; a message typed in one appears in the other; after the
outage each browser reconnects by itself and shows the missed messages once each, in
order. And the page streams with sserelay.js, not EventSource: through a recording proxy
in front of the relay, every stream request carries its token in a header and its position
in ``Last-Event-ID``; tokens of a few seconds are renewed with no reload; a relay killed twice
is resumed from the log, and a backlog past ``max_replay`` (``missed``) is fetched again.
Needs Debian's ``chromium`` and ``chromium-driver``; skipped (with the reason) when they
are missing, except in CI (``CI=true``), where that is a failure.

``SSERELAY_SCREENSHOT_DIR=docs/img`` saves ``chat.png`` (the wsgi run) there.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest
from chromium_page import Page
from django_helpers import SECRET, asgi_server, free_port, relay_server, wsgi_site

from browser import RecordingProxy, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]


def conversation(first: Page, second: Page, base: str, room: str) -> None:
    """Both pages enter ``room``; a message typed in one appears in the other."""
    first.enter(base, "ann", room)
    second.enter(base, "bob", room)
    first.say("hello from ann")
    second.wait(lambda: second.texts() == ["hello from ann"], "bob sees ann's message")
    second.say("hi ann")
    expected = ["hello from ann", "hi ann"]
    first.wait(lambda: first.texts() == expected, "ann sees bob's reply")


def catch_up(pages: tuple[Page, Page], expected: list[str]) -> None:
    for page in pages:
        page.wait(lambda p=page: p.status() == "live", "the browser reconnects by itself")
        page.wait(lambda p=page: p.texts() == expected, "the missed messages, once, in order")


def test_chat_wsgi_with_relay(django_dsn: str, pages: tuple[Page, Page], tmp_path: Path) -> None:
    first, second = pages
    site_port, relay_port = free_port(), free_port()
    relay = relay_server(django_dsn, relay_port, site_port, tmp_path / "relay.log").start()
    site = wsgi_site(django_dsn, site_port, relay_port, tmp_path / "site.log").start()
    try:
        relay.wait_listening()
        site.wait_listening()
        room = f"lobby-{uuid.uuid4().hex[:4]}"
        conversation(first, second, site.url, room)

        relay.stop(signal.SIGKILL)
        for page in pages:
            page.wait(lambda p=page: p.status() == "reconnecting", "the page sees the outage")
        missed = ["while the relay", "was down", "three messages"]
        for text in missed:
            first.say(text)  # Django is up: the posts succeed, the events go to the log

        relay.start().wait_listening()
        catch_up(pages, ["hello from ann", "hi ann", *missed])

        shots = os.environ.get("SSERELAY_SCREENSHOT_DIR")
        target = Path(shots) / "chat.png" if shots else tmp_path / "chat.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        second.driver.save_screenshot(str(target))
    finally:
        site.stop()
        relay.stop()


def test_chat_asgi_in_process(django_dsn: str, pages: tuple[Page, Page], tmp_path: Path) -> None:
    from chat.models import Message

    first, second = pages
    log = tmp_path / "uvicorn.log"
    site = asgi_server(django_dsn, log, SSERELAY_JWT_SECRET=SECRET, SSERELAY_RETRY_MS="300")
    site.start()
    try:
        site.wait_listening()
        room = f"a{uuid.uuid4().hex[:8]}"
        conversation(first, second, site.url, room)

        site.stop(signal.SIGKILL)
        for page in pages:
            page.wait(lambda p=page: p.status() == "reconnecting", "the page sees the outage")
        missed = ["while the site", "was down", "three messages"]
        for text in missed:
            # The site is down: save through the model here (same database, same
            # publish_changes one-liner), as another instance of the site would.
            Message.objects.create(room=room, user="carol", text=text)

        site.start().wait_listening()
        catch_up(pages, ["hello from ann", "hi ann", *missed])
    finally:
        site.stop()


def test_the_page_streams_with_the_client(django_dsn: str, page: Page, tmp_path: Path) -> None:
    from chat.models import Message

    site_port, relay_port = free_port(), free_port()
    # max_replay 2: two messages missed are replayed, three are a `missed` event.
    relay = relay_server(
        django_dsn, relay_port, site_port, tmp_path / "relay.log", SSERELAY_MAX_REPLAY="2"
    ).start()
    proxy = RecordingProxy(relay_port)
    # Tokens of 4 s: the client asks the room's token URL for a new one every ~3 s.
    site = wsgi_site(django_dsn, site_port, proxy.port, tmp_path / "site.log", CHAT_TOKEN_TTL="4")
    site.start()

    def streams() -> list[str]:
        return [r for r in proxy.requests() if r.startswith("GET /events/")]

    try:
        relay.wait_listening()
        site.wait_listening()
        room = f"c{uuid.uuid4().hex[:8]}"
        page.enter(site.url, "ann", room)
        page.driver.execute_script("window.notReloaded = true")
        expected: list[str] = []
        for i in range(3):
            page.say(f"live {i}")
            expected.append(f"live {i}")
            page.wait(lambda: page.texts() == expected, f"message {i} once")
        # Two token renewals, each a new stream resuming where the last one was.
        wait_for(lambda: len(streams()) >= 3, "two streams with renewed tokens", timeout=60)

        for missed in (["while down 1", "while down 2"], ["gone 1", "gone 2", "gone 3"]):
            relay.stop(signal.SIGKILL)
            page.wait(lambda: page.status() == "reconnecting", "the page sees the outage")
            for text in missed:
                Message.objects.create(room=room, user="bob", text=text)
            expected += missed
            relay.start().wait_listening()
            page.wait(lambda: page.status() == "live", "the page reconnects by itself")
            page.wait(
                lambda shown=list(expected): page.texts() == shown,
                "the missed messages, once, in order",
            )
        page.say("after")
        expected.append("after")
        page.wait(lambda: page.texts() == expected, "a message after the outages")

        assert page.driver.execute_script("return window.notReloaded") is True
        assert page.error() is None
        heads = streams()
        assert len(heads) >= 5, heads
        for head in proxy.requests():
            assert "token=" not in head.split("\r\n")[0], head
        for head in heads:
            assert re.search(r"\r\nauthorization: bearer \S+\r\n", head, re.I), head
            assert re.search(r"\r\nlast-event-id: \d+\r\n", head, re.I), head
        # `missed` (three events past max_replay 2): the page fetched the room again.
        log = site.log_path.read_text(errors="replace")
        gets = re.findall(rf'"GET /room/{room}/ HTTP/1.1" 200', log)
        assert len(gets) == 2, log[-6000:]
    finally:
        site.stop()
        proxy.close()
        relay.stop()
