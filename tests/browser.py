"""What the browser tests of the client (``test_browser_client.py``) run against: a relay
process, a recording TCP proxy in front of it (the requests the relay saw), a page server
(the test page, and short-lived tokens), and headless Chromium driven by Selenium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sserelay import mint_token

#: A secret shared by the relay and the page server's token endpoint (32+ bytes).
SECRET = "test-secret-for-the-browser-client-0123456789"
WAIT = 30.0  # seconds any one browser-side condition may take


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it is truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


class RelayServer:
    """``sserelay serve`` on a fixed port, so that it can be killed and started again."""

    def __init__(self, dsn: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SSERELAY_")}
        self.env.pop("ALLOWED_ORIGINS", None)
        self.env.update(env, PYTHONUNBUFFERED="1")
        self.args = [sys.executable, "-m", "sserelay", "serve", "--port", str(self.port)]
        self.args += ["--dsn", dsn]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RelayServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)
        wait_for(self._up, f"the relay serves on {self.port}")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited ({self.proc.returncode}):\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def metric(self, name: str) -> float:
        """One sample of ``/metrics``."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        match = re.search(rf"^{re.escape(name)} (\S+)$", raw.decode(), re.MULTILINE)
        assert match, f"no {name} in /metrics"
        return float(match.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RecordingProxy:
    """A TCP proxy to the relay that keeps every byte the browser sent: the requests (and
    so the URLs) the relay saw. While the relay is down it closes what it accepts."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sent: list[bytearray] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """Every request head sent so far (request line and headers)."""
        with self._lock:
            texts = [bytes(b).decode("latin-1") for b in self.sent]
        heads = []
        for text in texts:
            heads += re.findall(
                r"(?:GET|POST|OPTIONS|HEAD) \S+ HTTP/1\.[01]\r\n.*?\r\n\r\n", text, re.S
            )
        return heads

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the relay is down
            return
        upstream.settimeout(None)
        record = bytearray()
        with self._lock:
            self.sent.append(record)
            self._sockets |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
        self._pump(client, upstream, record)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


PAGE = """<!doctype html><meta charset="utf-8"><title>sserelay client</title>
<script type="module">
import { subscribe } from "%(relay)s/sserelay.js";
const q = new URLSearchParams(location.search);
const channels = q.getAll("channel");
const seen = (window.seen = { events: [], gaps: [], missed: [], statuses: [], plain: [] });
const token = async () => {
  const grant = q.get("grant") ? [q.get("grant")] : channels;
  const ask = [...grant.map((c) => ["channel", c]), ["ttl", q.get("ttl") || "600"]];
  return (await fetch("/token?" + new URLSearchParams(ask))).text();
};
window.sub = subscribe("%(relay)s", {
  channels,
  token,
  shared: q.has("shared"),
  transport: q.get("transport") || undefined,
  events: ["chat", "multi"],
  onEvent: (e) => seen.events.push(e),
  onGap: (g) => seen.gaps.push(g),
  onMissed: (m) => seen.missed.push(m),
  onStatus: (s) => seen.statuses.push({ ...s, error: String(s.error ?? ""), at: Date.now() }),
});
if (q.has("plain")) {
  // A plain EventSource on the same stream, to compare with.
  const es = new EventSource(
    `%(relay)s/events/${encodeURIComponent(channels[0])}?token=${await token()}`,
  );
  const keep = (e) => seen.plain.push({ type: e.type, data: e.data, lastEventId: e.lastEventId });
  for (const name of ["message", "chat", "multi"]) es.addEventListener(name, keep);
  es.onopen = () => (seen.plainOpen = true);
}
</script>
"""


class PageServer:
    """Serves the test page (``/page.html?channel=...``) and tokens (``/token?channel=&ttl=``),
    counting the tokens it mints."""

    def __init__(self, relay_url: str) -> None:
        self.minted = 0
        #: Other pages, by path (``add``).
        self.extra: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path == "/page.html":
                    body, ctype = (PAGE % {"relay": relay_url}).encode(), "text/html"
                elif url.path in server.extra:
                    body, ctype = server.extra[url.path].encode(), "text/html"
                elif url.path == "/token":
                    ttl = float(query.get("ttl", ["600"])[0])
                    body = mint_token(SECRET, subscribe=query["channel"], ttl=ttl).encode()
                    ctype = "text/plain"
                    server.minted += 1
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype + "; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, *channels: str, **params: str) -> str:
        query = [("channel", c) for c in channels] + list(params.items())
        return f"{self.origin}/page.html?" + "&".join(f"{k}={v}" for k, v in query)

    def add(self, path: str, html: str) -> str:
        """Serve ``html`` at ``path``; return its URL."""
        self.extra[path] = html
        return self.origin + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "the browser tests need Debian's chromium and chromium-driver (apt-get install)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: not found in CI, where .ci/run installs them")
    pytest.skip(reason)


def headless_chromium(binary: str, driver: str, *arguments: str) -> Any:
    """A Selenium driver of headless Chromium (the flags the brief asks for), keeping the
    pages' console for reading."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        *arguments,
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


class Browser:
    """One headless Chromium (one profile: its tabs share an origin's locks and channels)."""

    def __init__(self) -> None:
        self.driver = headless_chromium(*chromium())
        self.tabs: list[str] = []
        #: What the pages wrote to the console so far (read by :meth:`console`).
        self.logged: list[str] = []

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab (the first in the window's own); return its handle."""
        if self.tabs:
            self.driver.switch_to.new_window("tab")
        self.driver.get(url)
        self.tabs.append(self.driver.current_window_handle)
        return self.tabs[-1]

    def seen(self, tab: str) -> dict[str, Any]:
        """What the page in ``tab`` recorded (events, gaps, missed, statuses)."""
        self.driver.switch_to.window(tab)
        value = self.driver.execute_script("return JSON.stringify(window.seen || null)")
        return json.loads(value) or {"events": [], "gaps": [], "missed": [], "statuses": []}

    def wait(
        self, tab: str, condition: Callable[[dict[str, Any]], Any], what: str
    ) -> dict[str, Any]:
        """What the page recorded, once ``condition`` holds for it (within :data:`WAIT`)."""
        last: dict[str, Any] = {}

        def check() -> Any:
            nonlocal last
            last = self.seen(tab)
            return condition(last)

        try:
            wait_for(check, what)
            return last
        except AssertionError as exc:
            raise AssertionError(f"{exc}\npage saw: {_summary(last)}\n{self.console()}") from None

    def close_tab(self, tab: str) -> None:
        self.driver.switch_to.window(tab)
        self.driver.close()
        self.tabs.remove(tab)

    def console(self) -> str:
        try:
            self.logged += [e.get("message", "") for e in self.driver.get_log("browser")]
        except Exception as exc:  # the log is a diagnostic: never the failure itself
            return f"(no console: {exc!r})"
        return "console:\n" + "\n".join(self.logged[-30:])

    def quit(self) -> None:
        self.driver.quit()


def _summary(seen: dict[str, Any]) -> str:
    events = [(e.get("type"), e.get("data"), e.get("id")) for e in seen.get("events", [])]
    statuses = [(s.get("state"), s.get("status"), s.get("error")) for s in seen.get("statuses", [])]
    return json.dumps({**seen, "events": events[-20:], "statuses": statuses[-12:]})[:4000]


def states(seen: dict[str, Any]) -> list[str]:
    return [s["state"] for s in seen["statuses"]]


def datas(seen: dict[str, Any]) -> list[str]:
    return [e["data"] for e in seen["events"]]


def pages_of(browser: Browser) -> Iterator[str]:
    yield from list(browser.tabs)
