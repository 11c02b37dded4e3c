"""The chat example as a newcomer runs it by hand (its README: uvicorn, no DJANGO_SECRET_KEY),
in headless Chromium: what happens to a post across server restarts, and to a bad room name.

- Restarted, the server keeps its secret key (the example keeps one in a file of its own):
  the page's name cookie stays valid and a post after the restart appears.
- When a post cannot be sent (the server is down; its key changed, so the page's name is
  void) the page says why and keeps the text; nothing is lost silently.
- With tokens, a page whose name is void gets no token for its stream, and says why.
- The room field's pattern compiles in the browser (it is a ``v``-flag regular expression
  there) and refuses a bad name; one that gets past it is answered with the form and why.
"""

from __future__ import annotations

import signal
import sys
import uuid
from pathlib import Path

import pytest
from chromium_page import Page
from django_helpers import SECRET, Server, chat_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]


def by_hand(db: str, tmp_path: Path, **env: str) -> Server:
    """``uvicorn chatsite.asgi:application`` as the example's README runs it: no
    ``DJANGO_SECRET_KEY`` unless given, and a data directory of the test's own (where the
    example keeps its key file)."""
    environ = chat_env(db, XDG_DATA_HOME=str(tmp_path / "data"), SSERELAY_RETRY_MS="300")
    environ.pop("DJANGO_SECRET_KEY")
    environ.update(env)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "chatsite.asgi:application", "--port", str(port)]
    args += ["--timeout-graceful-shutdown", "2"]
    return Server(args, environ, port, tmp_path / "uvicorn.log")


def restart(site: Server, page: Page) -> None:
    site.stop(signal.SIGTERM)
    page.wait(lambda: page.status() == "reconnecting", "the page sees the server go")
    site.start().wait_listening()
    page.wait(lambda: page.status() == "live", "the page reconnects")


def test_a_post_after_a_restart_arrives(django_dsn: str, page: Page, tmp_path: Path) -> None:
    site = by_hand(django_dsn, tmp_path).start()
    try:
        site.wait_listening()
        page.enter(site.url, "ann", f"r{uuid.uuid4().hex[:8]}")
        page.say("before the restart")
        page.wait(lambda: page.texts() == ["before the restart"], "the first message")
        restart(site, page)
        page.say("after the restart")
        expected = ["before the restart", "after the restart"]
        page.wait(lambda: page.texts() == expected, "the message posted after the restart")
        assert page.error() is None
    finally:
        site.stop()
    assert (tmp_path / "data" / "sserelay" / "chat-secret-key").stat().st_mode & 0o077 == 0


def test_a_post_that_fails_says_why(django_dsn: str, page: Page, tmp_path: Path) -> None:
    site = by_hand(django_dsn, tmp_path, DJANGO_SECRET_KEY="the first key").start()
    try:
        site.wait_listening()
        page.enter(site.url, "bob", f"r{uuid.uuid4().hex[:8]}")

        site.stop(signal.SIGTERM)
        page.say_unsent("while it is down")
        reason = page.wait(page.error, "the page says the post failed")
        assert "cannot be reached" in reason
        assert page.field("text") == "while it is down", "the text is kept"

        # A new key: the page's signed name no longer verifies.
        site.env["DJANGO_SECRET_KEY"] = "another key"
        site.start().wait_listening()
        page.wait(lambda: page.status() == "live", "the page reconnects")
        page.say_unsent("")  # send what the field holds
        page.wait(lambda: "no longer valid" in (page.error() or ""), "the page says why")
        assert page.field("text") == "while it is down"
        assert page.texts() == []
    finally:
        site.stop()


def test_the_room_field_and_a_bad_room(django_dsn: str, page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    site = by_hand(django_dsn, tmp_path, DJANGO_SECRET_KEY="a key").start()
    try:
        site.wait_listening()
        page.driver.get(site.url + "/")
        room = page.driver.find_element(By.NAME, "room")
        valid = "return arguments[0].checkValidity()"
        for name, ok in [("lobby-2", True), ("Bad Room", False), ("a_b", False)]:
            room.clear()
            room.send_keys(name)
            assert page.driver.execute_script(valid, room) is ok, name
        # Chromium reports a pattern it cannot compile on the console, and skips the check.
        assert not [m for m in page.console() if "pattern" in m], page.console()

        # Past the browser's check (a script, an old browser): the form again, and why.
        page.driver.find_element(By.NAME, "user").send_keys("carol")
        page.driver.execute_script(
            "arguments[0].value = 'Bad Room'; arguments[0].form.submit()", room
        )
        page.wait(lambda: page.error() is not None, "the form says what is wrong")
        assert "a-z, 0-9 and -" in (page.error() or "")
        assert page.field("room") == "bad room"
        assert page.field("user") == "carol"
    finally:
        site.stop()


def test_a_page_whose_name_is_void_gets_no_token(
    django_dsn: str, page: Page, tmp_path: Path
) -> None:
    """With tokens, the room's token URL answers only a page with a valid name: after a key
    change the page's client gets a 403 with the reason, which the page shows, and it does
    not go live."""
    site = by_hand(
        django_dsn, tmp_path, DJANGO_SECRET_KEY="the first key", SSERELAY_JWT_SECRET=SECRET
    ).start()
    notice = "const n = document.getElementById('notice'); return n.hidden ? null : n.textContent"
    try:
        site.wait_listening()
        page.enter(site.url, "dan", f"r{uuid.uuid4().hex[:8]}")
        assert page.driver.execute_script(notice) is None
        site.stop(signal.SIGTERM)
        page.wait(lambda: page.status() == "reconnecting", "the page sees the server go")
        site.env["DJANGO_SECRET_KEY"] = "another key"
        site.start().wait_listening()
        shown = page.wait(lambda: page.driver.execute_script(notice), "the page says why")
        assert "no longer valid" in shown
        assert page.status() == "reconnecting"
    finally:
        site.stop()
