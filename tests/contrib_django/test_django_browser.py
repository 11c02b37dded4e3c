"""The chat example in a real browser (headless Chromium driven by Selenium), under both
deployments:

- ``wsgi``: Django's WSGI server for the pages, ``sserelay serve`` for the streams; the
  relay is killed (SIGKILL) and restarted while messages are posted;
- ``asgi``: Django under uvicorn serves pages and streams; the whole server is killed
  and restarted while messages are saved (by this process, through the same model).

Both: two pages in one room; a message typed in one appears in the other; after the
outage each browser reconnects by itself and shows the missed messages once each, in
order. Needs Debian's ``chromium`` and ``chromium-driver``; skipped (with the reason)
when they are missing, except in CI (``CI=true``), where that is a failure.

``SSERELAY_SCREENSHOT_DIR=docs/img`` saves ``chat.png`` (the wsgi run) there.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from chromium_page import Page
from django_helpers import SECRET, Server, asgi_server, chat_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]


def relay_server(db: str, port: int, site_port: int, log: Path) -> Server:
    env = chat_env(
        db,
        SSERELAY_JWT_SECRET=SECRET,
        ALLOWED_ORIGINS=f"http://127.0.0.1:{site_port}",
        SSERELAY_RETRY_MS="300",
    )
    args = [sys.executable, "-m", "sserelay", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server(args, env, port, log)


def wsgi_site(db: str, port: int, relay_port: int, log: Path) -> Server:
    env = chat_env(db, SSERELAY_JWT_SECRET=SECRET, CHAT_STREAM_URL=f"http://127.0.0.1:{relay_port}")
    args = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    return Server(args, env, port, log)


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
