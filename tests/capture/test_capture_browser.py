"""A row inserted, updated and deleted by ``psql`` shows up in open browser pages (headless
Chromium), through ``sserelay serve --capture`` in a process of its own: no trigger, no
publish call, no application code. Needs Debian's ``chromium`` and ``chromium-driver``
(skipped without them, except in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from capture_helpers import execute, psql

from browser import chromium, headless_chromium
from processes import relay_process
from sserelay.bus.postgres.capture import rules

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(240)]

PAGE = """<!doctype html>
<meta charset="utf-8">
<p id="status">connecting</p>
<ul id="orders"></ul>
<script>
  const list = document.getElementById("orders");
  const source = new EventSource("%(relay)s/events/orders");
  source.onopen = () => { document.getElementById("status").textContent = "live"; };
  const show = (row) => {
    let item = document.getElementById("order-" + row.id);
    if (!item) {
      item = document.createElement("li");
      item.id = "order-" + row.id;
      list.appendChild(item);
    }
    item.textContent = row.id + ": " + row.status;
  };
  source.addEventListener("orders.insert", (e) => show(JSON.parse(e.data).new));
  source.addEventListener("orders.update", (e) => show(JSON.parse(e.data).new));
  source.addEventListener("orders.delete", (e) => {
    document.getElementById("order-" + JSON.parse(e.data).key.id)?.remove();
  });
</script>
"""


@contextlib.contextmanager
def page_server(directory: Path) -> Iterator[int]:
    """A static file server for the page, on a free port."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Browser:
    def __init__(self) -> None:
        self.driver = headless_chromium(*chromium())

    def text(self, script: str) -> Any:
        try:
            return self.driver.execute_script(script)
        except Exception as exc:  # navigating: show it in the failure message
            return f"<{type(exc).__name__}>"

    def orders(self) -> list[str]:
        found = self.text("return Array.from(document.querySelectorAll('li'), e => e.textContent)")
        return list(found) if isinstance(found, list) else [str(found)]

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, 30, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(
                f"{what}: not within 30s; the page shows {self.orders()}"
            ) from None


async def test_psql_changes_appear_in_open_pages(capture_dsn: str, tmp_path: Path) -> None:
    execute(capture_dsn, "CREATE TABLE orders (id int PRIMARY KEY, status text)")
    with psycopg.connect(capture_dsn, autocommit=True) as conn:
        rules.add(conn, "orders", "orders")
    browsers: list[Browser] = []
    with page_server(tmp_path) as page_port:
        origin = f"http://127.0.0.1:{page_port}"
        env = {"ALLOWED_ORIGINS": origin}
        args = ("--capture", "--dsn", capture_dsn)
        async with relay_process(*args, log=tmp_path / "relay.log", env=env) as relay:
            (tmp_path / "index.html").write_text(PAGE % {"relay": f"http://127.0.0.1:{relay.port}"})
            try:
                for _ in range(2):
                    browser = await asyncio.to_thread(Browser)
                    browsers.append(browser)
                    await asyncio.to_thread(browser.driver.get, origin + "/index.html")
                    live = functools.partial(_is_live, browser)
                    await asyncio.to_thread(browser.wait, live, "the page is live")
                await _until_captured(capture_dsn)
                steps = [
                    ("INSERT INTO orders VALUES (1, 'new'), (2, 'new')", ["1: new", "2: new"]),
                    ("UPDATE orders SET status = 'paid' WHERE id = 1", ["1: paid", "2: new"]),
                    ("DELETE FROM orders WHERE id = 2", ["1: paid"]),
                ]
                for command, shown in steps:
                    await asyncio.to_thread(psql, capture_dsn, command)
                    for browser in browsers:
                        await asyncio.to_thread(
                            browser.wait, lambda b=browser, s=shown: b.orders() == s, command
                        )
            finally:
                for browser in browsers:
                    await asyncio.to_thread(browser.driver.quit)


def _is_live(browser: Browser) -> bool:
    return bool(browser.text("return document.getElementById('status').textContent") == "live")


async def _until_captured(dsn: str) -> None:
    """Until the relay's capturer streams from the slot."""
    from sserelay.testing import wait_until

    def active() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE database = current_database()"
            ).fetchone()
        return bool(row and row[0])

    await wait_until(active, timeout=60)
