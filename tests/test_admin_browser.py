"""The operator's page in headless Chromium, against a relay process: refused without the
admin credential, loaded with it, kept live over its own stream (opened with the page's
cookie), showing a stream opened after it loaded, and usable at a phone's width.

It also takes the screenshot in the docs: with ``SSERELAY_ADMIN_SCREENSHOT=docs/admin.png``
it writes there (docs/admin.md says how), otherwise into the test's temporary directory.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from browser import SECRET, Browser, RelayServer, wait_for
from sserelay import mint_token

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.timeout(300),
]


def open_stream(port: int, channel: str, subject: str) -> socket.socket:
    """A stream held open on a plain socket, once ``: ready``."""
    token = mint_token(SECRET, subscribe=["*"], subject=subject, ttl=600)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    request = f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    try:
        sock.sendall(request.encode())
        seen = b""
        while b": ready\n" not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk
    except BaseException:
        sock.close()
        raise
    return sock


def publish_until(dsn: str, stop: threading.Event) -> None:
    """Events on ``dashboard``, about 20 a second, until ``stop``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = 0
        while not stop.wait(0.05):
            n += 1
            conn.execute("SELECT pg_notify('dashboard', %s)", (f"tick {n}",))


@pytest.fixture
def relay(dsn: str, tmp_path: Path) -> Iterator[RelayServer]:
    server = RelayServer(
        dsn,
        tmp_path / "relay.log",
        SSERELAY_JWT_SECRET=SECRET,
        SSERELAY_ADMIN="1",
        SSERELAY_ADMIN_INTERVAL="0.5",
        SSERELAY_MAX_STREAMS_PER_SUBJECT="2",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def text(browser: Browser, selector: str) -> str:
    script = f"const e = document.querySelector({selector!r}); return e ? e.textContent : null;"
    return str(browser.driver.execute_script(script) or "")


def test_the_page_needs_the_credential_and_shows_streams_live(
    relay: RelayServer, dsn: str, tmp_path: Path
) -> None:
    browser = Browser()  # skips (or fails in CI) when Chromium is missing
    held: list[socket.socket] = []
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{relay.url}/admin", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        browser.open(f"{relay.url}/admin")
        assert "admin token" in browser.driver.page_source
        assert browser.driver.execute_script("return document.getElementById('view')") is None

        admin = mint_token(SECRET, admin=True, ttl=600)
        browser.driver.get(f"{relay.url}/admin?token={admin}")
        assert "sserelay · operator" in browser.driver.title
        # Live: its stream (opened with the cookie the page set) brings updates.
        wait_for(lambda: text(browser, "#state") == "live", "the page's stream is live")
        updates = "return Number(document.body.dataset.updates)"
        wait_for(lambda: browser.driver.execute_script(updates) >= 1, "an update arrived")
        assert "dashboard" not in text(browser, "#view")

        # A stream opened after the page loaded shows up on it, without a reload.
        held.append(open_stream(relay.port, "dashboard", "alice"))
        wait_for(lambda: "dashboard" in text(browser, "#view"), "the new stream on the page")

        # Some history for the page (and the screenshot): streams gone and refused.
        for channel, subject in (("orders:42", "bob"), ("room-7", "carol"), ("room-7", "dave")):
            open_stream(relay.port, channel, subject).close()
        held.append(open_stream(relay.port, "room-7", "erin"))
        held.append(open_stream(relay.port, "room-7", "erin"))
        with pytest.raises(AssertionError):  # erin's third: 429, limit
            open_stream(relay.port, "room-8", "erin")
        wait_for(
            lambda: all(w in text(browser, "#view") for w in ("client_gone", "limit", "carol")),
            "the endings listed",
        )
        browser.driver.execute_script("document.getElementById('filter').value = 'carol'")
        browser.driver.execute_script(
            "document.getElementById('filter').dispatchEvent(new Event('input'))"
        )
        shown = "return [...document.querySelectorAll('tr[data-ending]:not([hidden])')].length"
        wait_for(lambda: browser.driver.execute_script(shown) == 1, "the filter keeps carol's")
        browser.driver.execute_script("document.getElementById('filter').value = ''")
        browser.driver.execute_script(
            "document.getElementById('filter').dispatchEvent(new Event('input'))"
        )

        # Events flowing: the channel among the top by events/s, as the screenshot shows.
        stop = threading.Event()
        publisher = threading.Thread(target=publish_until, args=(dsn, stop), daemon=True)
        publisher.start()
        try:
            rates = "#view .pair > div:nth-child(2)"
            wait_for(lambda: "dashboard" in text(browser, rates), "dashboard among events/s")
            # The screenshot of the docs.
            browser.driver.set_window_size(1280, 1000)
            target = Path(os.environ.get("SSERELAY_ADMIN_SCREENSHOT") or tmp_path / "admin.png")
            assert browser.driver.save_screenshot(str(target)), target
            assert target.stat().st_size > 10_000
        finally:
            stop.set()
            publisher.join(30)

        # On a phone: nothing wider than the screen (wide tables scroll in their box).
        browser.driver.set_window_size(390, 844)
        width = "return [document.documentElement.scrollWidth, window.innerWidth]"
        wait_for(
            lambda: (lambda w: w[0] <= w[1])(browser.driver.execute_script(width)),
            "the page fits a phone's width",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{browser.console()}\nrelay log:\n{relay.log()}") from None
    finally:
        for sock in held:
            sock.close()
        browser.quit()
