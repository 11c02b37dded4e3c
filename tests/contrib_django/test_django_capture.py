"""``SSERELAY["CAPTURE"]``: the system check, the management command, and a chat message
inserted by ``psql`` captured as the command configured it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sserelay.testing import wait_until

pytestmark = pytest.mark.integration

CHAT_CAPTURE = {
    "chat.Message": {
        "channel": "chat-{room}",
        "fields": ["id", "room", "user", "text", "created"],
        "events": ["insert"],
        "event_prefix": "message",
    }
}
#: The chat's table, as its migration makes it, for a database Django does not manage.
CHAT_TABLE = """
CREATE TABLE chat_message (
    id bigserial PRIMARY KEY, room varchar(40) NOT NULL, "user" varchar(40) NOT NULL,
    text varchar(500) NOT NULL, created timestamptz NOT NULL DEFAULT now())
"""


@pytest.fixture(autouse=True)
def _django(django_dsn: str) -> Iterator[None]:
    yield


def check_messages(capture: Any) -> list[str]:
    from django.core import checks
    from django.test import override_settings

    with override_settings(SSERELAY={"CAPTURE": capture}):
        found = checks.run_checks()
    return [f"{m.id}: {m.msg}" for m in found if m.id and m.id.startswith("sserelay")]


def test_the_check_knows_models_fields_and_options() -> None:
    assert check_messages(CHAT_CAPTURE) == []
    assert check_messages(None) == []
    for capture, reason in [
        ({"chat.Nope": {"channel": "x"}}, "no model 'chat.Nope'"),
        ({"chat.Message": {"channel": "chat-{nope}"}}, "chat.Message has no field 'nope'"),
        ({"chat.Message": {"channel": "c", "fields": ["text", "x"]}}, "has no field 'x'"),
        ({"chat.Message": {"channel": "c", "events": ["upsert"]}}, "events must be some of"),
        ({"chat.Message": {"chanel": "c"}}, "unknown keys ['chanel']"),
        ({"chat.Message": {"fields": ["id"]}}, "needs a 'channel'"),
        ({"chat.Message": {"channel": "c{"}}, "without a column name"),
        (["chat.Message"], "must be a dict of model label"),
    ]:
        found = check_messages(capture)
        assert len(found) == 1 and found[0].startswith("sserelay.E010: "), (capture, found)
        assert reason in found[0], (reason, found)


def test_fields_become_columns() -> None:
    from django.test import override_settings

    from sserelay.contrib.django.capture import configured

    with override_settings(
        SSERELAY={
            "CAPTURE": {"chat.Message": {"channel": "c-{room}/{pk}", "fields": ["pk", "text"]}}
        }
    ):
        (spec,) = configured()
    assert (spec.table, spec.channel, spec.columns) == (
        '"chat_message"',
        "c-{room}/{id}",
        ("id", "text"),
    )
    assert spec.events == {"insert", "update", "delete"} and spec.event_prefix is None


@pytest.fixture
def capture_db(logical_cluster: Any) -> Iterator[str]:
    from pgcluster import capture_database

    with capture_database(logical_cluster.dsn(), install=False) as db:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(CHAT_TABLE)
        yield db


async def test_the_command_installs_and_a_psql_insert_is_captured(capture_db: str) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    from sserelay.bus.postgres.capture import CaptureOptions, Capturer

    out = _Output()
    with override_settings(SSERELAY={"CAPTURE": CHAT_CAPTURE, "LISTEN_DSN": capture_db}):
        await asyncio.to_thread(call_command, "sserelay_capture", stdout=out)
        assert "capturing public.chat_message (insert) on 'chat-{room}'" in out.text
        capturer = Capturer(
            capture_db, CaptureOptions(heartbeat_interval=0.5, standby_interval=0.2)
        )
        task = asyncio.create_task(capturer.run())
        try:
            sql = "INSERT INTO chat_message (room, \"user\", text) VALUES ('lobby', 'ann', 'hi')"
            await asyncio.to_thread(
                subprocess.run, ["psql", "-X", "-q", capture_db, "-c", sql], check=True, timeout=60
            )
            await wait_until(lambda: capturer.counters.events == 1, timeout=30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        status = _Output()
        await asyncio.to_thread(call_command, "sserelay_capture", "--status", stdout=status)
        assert "captured:       1 transactions, 1 events" in status.text
    with psycopg.connect(capture_db) as conn:
        row = conn.execute("SELECT channel, event, data FROM sserelay.events").fetchone()
    assert row is not None
    channel, event, data = row
    assert (channel, event) == ("chat-lobby", "message.insert")
    new = json.loads(data)["new"]
    assert {k: new[k] for k in ("room", "user", "text")} == {
        "room": "lobby",
        "user": "ann",
        "text": "hi",
    }
    assert new["created"].endswith("+00:00") and "T" in new["created"]


def test_the_command_reports_a_rule_the_table_refuses(capture_db: str) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.test import override_settings

    bad = {"chat.Message": {"channel": "chat-{room}"}}  # deletes would carry only the id
    with (
        override_settings(SSERELAY={"CAPTURE": bad, "LISTEN_DSN": capture_db}),
        pytest.raises(CommandError, match="a DELETE carries only the replica identity"),
    ):
        call_command("sserelay_capture", stdout=_Output())


class _Output:
    """A stdout for call_command that keeps what was written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass
