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
from collections.abc import Iterator
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


@pytest.mark.parametrize("version", [2, 4])
def test_htmx_recipe(django_dsn: str, unpkg: Unpkg, tmp_path: Path, version: int) -> None:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "chatsite.asgi:application", "--port", str(port)]
    args += ["--timeout-graceful-shutdown", "2", "--no-access-log"]
    page = Page(*chromium(), *unpkg.chromium_args)  # first: no server left behind without one
    site = Server(args, site_env(django_dsn), port, tmp_path / "uvicorn.log").start()
    room = f"h{version}-{uuid.uuid4().hex[:6]}"
    try:
        site.wait_listening()
        save(django_dsn, room, "rendered with the page")
        page.driver.get(f"{site.url}/htmx{version}/{room}/")
        page.wait(lambda: page.texts() == ["rendered with the page"], "the page")
        save(django_dsn, room, "live")
        page.wait(lambda: page.texts()[-1:] == ["live"], "a message swapped in live")

        site.stop(signal.SIGKILL)
        missed = ["while the site", "was down"]
        for text in missed:
            save(django_dsn, room, text)
        site.start().wait_listening()
        expected = ["rendered with the page", "live", *missed]
        page.wait(lambda: page.texts() == expected, "the missed messages", RECONNECT)

        save(django_dsn, room, "after")
        page.wait(lambda: page.texts() == [*expected, "after"], "live again, nothing twice")
        assert not [m for m in page.console() if "Uncaught" in m], page.console()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsite log:\n{site.log()}\nunpkg: {unpkg.requests}") from None
    finally:
        page.quit()
        site.stop()
    pinned = {f"/htmx.org@{'2.0.11' if version == 2 else '4.0.1'}/dist/htmx.min.js"}
    assert pinned <= set(unpkg.requests), unpkg.requests


def test_plain_eventsource_recipe(django_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "chatsite.asgi:application", "--port", str(port)]
    args += ["--timeout-graceful-shutdown", "2", "--no-access-log"]
    site = Server(args, site_env(django_dsn), port, tmp_path / "uvicorn.log").start()
    page = Page(*chromium())
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
        save(django_dsn, room, "live")
        page.wait(lambda: items()[-1:] == ["carol: live"], "a message added live")

        site.stop(signal.SIGKILL)
        missed = ["while the site", "was down"]
        for text in missed:
            save(django_dsn, room, text)
        site.start().wait_listening()
        expected = [f"carol: {t}" for t in ["rendered with the page", "live", *missed]]
        page.wait(lambda: items() == expected, "the missed messages", RECONNECT)

        save(django_dsn, room, "after")
        page.wait(lambda: items() == [*expected, "carol: after"], "live again, nothing twice")
        assert not [m for m in page.console() if "Uncaught" in m], page.console()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsite log:\n{site.log()}") from None
    finally:
        page.quit()
        site.stop()
