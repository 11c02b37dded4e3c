"""docs/django.md's recipes that do without sserelay.js, in headless Chromium: htmx 2 with
``htmx-ext-sse`` (EventSource) and htmx 4 with its own ``hx-sse`` (fetch), the versions
the guide pins, loaded from the URLs it shows (:mod:`cdn`); and the plain ``EventSource``
page (the chat example itself uses the client).

The site is the chat example plus ``htmx_site``: a page per recipe (its template holds the
guide's lines) and the recipes' publishers (``htmx_site/apps.py``, the guide's lines). A
message saved by another process of the site arrives live, rendered; the site is killed
(SIGKILL) and messages are saved while it is down; when it is back the page reconnects by
itself and shows the missed ones once each, in order. Once each proves the resume used
``Last-Event-ID``: the page's URL still carries the ``lastEventId`` of when it was rendered,
and resuming from that would show a message twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cdn import Unpkg
from chromium_page import Page
from django_helpers import CHAT, SECRET, Server, chat_env, free_port

from browser import chromium

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
RECONNECT = 90.0  # htmx 4 backs off exponentially while the site is down


@pytest.fixture(scope="module")
def unpkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpkg]:
    with Unpkg(tmp_path_factory.mktemp("unpkg")) as cdn:
        yield cdn


def site_env(db: str) -> dict[str, str]:
    env = chat_env(db, SSERELAY_JWT_SECRET=SECRET, SSERELAY_RETRY_MS="300")
    env["DJANGO_SETTINGS_MODULE"] = "htmx_site.settings"
    env["PYTHONPATH"] = f"{HERE}:{env['PYTHONPATH']}"
    return env


def save(db: str, room: str, text: str) -> None:
    """Save a message from a process of the site of its own (the site's publishers run)."""
    code = (
        "import django; django.setup(); from chat.models import Message;"
        f"Message.objects.create(room={room!r}, user='carol', text={text!r})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=CHAT, env=site_env(db), check=True, timeout=60)


def uvicorn_site(db: str, tmp_path: Path) -> Server:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "chatsite.asgi:application", "--port", str(port)]
    args += ["--timeout-graceful-shutdown", "2", "--no-access-log"]
    return Server(args, site_env(db), port, tmp_path / "uvicorn.log")


def live_through_a_kill(
    db: str, site: Server, page: Page, room: str, texts: Callable[[], list[str]], shown: str
) -> None:
    """A message saved live arrives; the site is SIGKILLed, messages are saved while it is
    down, it comes back: the missed ones arrive once each, in order, then live ones again.
    ``shown`` is how the page shows a message's text (``{}`` for the text)."""
    save(db, room, "live")
    page.wait(lambda: texts()[-1:] == [shown.format("live")], "a message added live")
    site.stop(signal.SIGKILL)
    missed = ["while the site", "was down"]
    for text in missed:
        save(db, room, text)
    site.start().wait_listening()
    expected = [shown.format(t) for t in ["rendered with the page", "live", *missed]]
    page.wait(lambda: texts() == expected, "the missed messages", RECONNECT)
    save(db, room, "after")
    page.wait(lambda: texts() == [*expected, shown.format("after")], "live again, nothing twice")
    assert not [m for m in page.console() if "Uncaught" in m], page.console()


@pytest.mark.parametrize("version", [2, 4])
def test_htmx_recipe(django_dsn: str, unpkg: Unpkg, tmp_path: Path, version: int) -> None:
    page = Page(*chromium(), *unpkg.chromium_args)  # first: no server left behind without one
    site = uvicorn_site(django_dsn, tmp_path).start()
    room = f"h{version}-{uuid.uuid4().hex[:6]}"
    try:
        site.wait_listening()
        save(django_dsn, room, "rendered with the page")
        page.driver.get(f"{site.url}/htmx{version}/{room}/")
        page.wait(lambda: page.texts() == ["rendered with the page"], "the page")
        live_through_a_kill(django_dsn, site, page, room, page.texts, "{}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsite log:\n{site.log()}\nunpkg: {unpkg.requests}") from None
    finally:
        page.quit()
        site.stop()
    pinned = {f"/htmx.org@{'2.0.11' if version == 2 else '4.0.1'}/dist/htmx.min.js"}
    assert pinned <= set(unpkg.requests), unpkg.requests


def test_plain_eventsource_recipe(django_dsn: str, tmp_path: Path) -> None:
    page = Page(*chromium())
    site = uvicorn_site(django_dsn, tmp_path).start()
    room = f"es-{uuid.uuid4().hex[:6]}"

    def items() -> list[str]:
        found = page.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages li'), (e) => e.textContent)"
        )
        return list(found)

    try:
        site.wait_listening()
        save(django_dsn, room, "rendered with the page")
        page.driver.get(f"{site.url}/eventsource/{room}/")
        page.wait(lambda: items() == ["carol: rendered with the page"], "the page")
        page.wait(lambda: page.driver.execute_script("return source.readyState") == 1, "the stream")
        live_through_a_kill(django_dsn, site, page, room, items, "carol: {}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsite log:\n{site.log()}") from None
    finally:
        page.quit()
        site.stop()
