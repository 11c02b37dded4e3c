"""The chat example with change data capture (``CHAT_CAPTURE=1``), in headless Chromium,
under both deployments: ``wsgi`` (runserver, and ``sserelay serve --capture``) and ``asgi``
(uvicorn, and ``manage.py sserelay_capture --run`` beside it).

The views publish nothing: a message posted from the page reaches it through the
replication stream, and so does a row INSERTed with plain SQL (psycopg, as ``psql`` would),
each exactly once. Runs on the session's private PostgreSQL with ``wal_level = logical``
(tests/pgcluster.py), in a database of the test's own, migrated by the example's
``manage.py`` as its README says. And ``sserelay demo --capture`` in both modes: the
``psql`` line it prints, run in a shell, shows in the open page.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from chromium_page import Page
from django_helpers import (
    CHAT,
    SECRET,
    Server,
    asgi_server,
    chat_env,
    free_port,
    relay_server,
    wsgi_site,
)

from browser import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def chat_db(logical_cluster: Any) -> Iterator[str]:
    """A database on the logical cluster, migrated and with the chat's capture rule
    installed: ``manage.py migrate`` and ``manage.py sserelay_capture``, with
    ``CHAT_CAPTURE=1``."""
    from pgcluster import capture_database

    with capture_database(logical_cluster.dsn(), install=False) as db:
        env = chat_env(db, CHAT_CAPTURE="1")
        for command in (["migrate", "--verbosity", "0"], ["sserelay_capture"]):
            done = subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=CHAT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        assert "capturing public.chat_message (insert) on 'chat-{room}'" in done.stdout
        yield db


def deployment(mode: str, db: str, tmp_path: Path) -> tuple[str, list[Server]]:
    """The chat with capture on, as ``mode`` runs it: its URL and its processes."""
    if mode == "asgi":
        site = asgi_server(db, tmp_path / "site.log", CHAT_CAPTURE="1", SSERELAY_JWT_SECRET=SECRET)
        capturer_env = chat_env(db, CHAT_CAPTURE="1")
        capturer = Server(
            [sys.executable, "manage.py", "sserelay_capture", "--run"],
            capturer_env,
            site.port,  # the site's: the capturer listens on no port
            tmp_path / "capturer.log",
        )
        return site.url, [capturer, site]
    site_port, relay_port = free_port(), free_port()
    relay = relay_server(db, relay_port, site_port, tmp_path / "relay.log", "--capture")
    site = wsgi_site(db, site_port, relay_port, tmp_path / "site.log", CHAT_CAPTURE="1")
    return site.url, [relay, site]


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_a_row_inserted_with_sql_appears_in_the_page(
    mode: str, chat_db: str, page: Page, tmp_path: Path
) -> None:
    url, servers = deployment(mode, chat_db, tmp_path)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_listening()
        room = f"c{uuid.uuid4().hex[:8]}"
        page.enter(url, "ann", room)
        page.say("from the page")
        page.wait(lambda: page.texts() == ["from the page"], "the page's own message")

        with psycopg.connect(chat_db, autocommit=True) as conn:
            conn.execute(
                'INSERT INTO chat_message (room, "user", text) VALUES (%s, %s, %s)',
                (room, "psql", "hello from psql"),
            )
        expected = ["from the page", "hello from psql"]
        page.wait(lambda: page.texts() == expected, "the inserted row")
        # Events come in commit order: a second copy of the row would come before this.
        page.say("after")
        expected.append("after")
        page.wait(lambda: page.texts() == expected, "each message exactly once")
        assert page.error() is None
    finally:
        for server in reversed(servers):
            server.stop()

    with psycopg.connect(chat_db) as conn:
        events = conn.execute(
            "SELECT event FROM sserelay.events WHERE channel = %s ORDER BY id", (f"chat-{room}",)
        ).fetchall()
    # Capture published all three; the views published nothing of their own.
    assert [e for (e,) in events] == ["message.insert"] * 3


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_demo_capture_and_its_psql_line(
    mode: str, chat_db: str, page: Page, tmp_path: Path
) -> None:
    """``sserelay demo --capture``: the ``psql`` line it prints, pasted into a shell,
    shows in an open page."""
    port, relay_port = free_port(), free_port()
    args = [sys.executable, "-m", "sserelay", "demo", "--capture", "--mode", mode]
    args += ["--port", str(port), "--relay-port", str(relay_port), "--dsn", chat_db]
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(args, env=chat_env(chat_db), stdout=out, stderr=subprocess.STDOUT)
    try:
        found = wait_for(
            lambda: (
                demo.poll() is None
                and re.search(r"^  (psql .*)$", log.read_text(errors="replace"), re.M)
            ),
            "the demo prints its psql line",
            timeout=120,
        )
        page.enter(f"http://127.0.0.1:{port}", "ann", "lobby")
        subprocess.run(["bash", "-c", found.group(1)], check=True, timeout=60)
        page.wait(lambda: page.texts() == ["hi"], "the row the psql line inserted")
        page.say("after")
        page.wait(lambda: page.texts() == ["hi", "after"], "each message once")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndemo:\n{log.read_text(errors='replace')[-6000:]}") from None
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C, as it says
        try:
            status = demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            status = demo.wait()
    assert status == 0, log.read_text(errors="replace")[-6000:]
