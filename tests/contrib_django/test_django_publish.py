"""publish() through Django's connection: transactions, durability, model changes."""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sserelay.bus.postgres.statements import durable_channel

pytestmark = pytest.mark.integration


class Listener:
    """A LISTENing psycopg connection of its own, to see what is really notified."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        # Plain events on the channel, durable ones on its durable name.
        for name in (channel, durable_channel(channel)):
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        self.buffer: deque[str] = deque()

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        if not self.buffer:
            # stop_after=1 still yields every notification read in the same batch.
            self.buffer.extend(n.payload for n in self.conn.notifies(timeout=timeout, stop_after=1))
        if not self.buffer:
            raise AssertionError(f"no notification within {timeout}s")
        return dict(json.loads(self.buffer.popleft()))

    def pending(self) -> list[str]:
        """What has arrived already (without waiting for more)."""
        self.buffer.extend(n.payload for n in self.conn.notifies(timeout=0.05))
        return list(self.buffer)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def channel() -> str:
    return f"dj-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def listener(django_dsn: str, channel: str) -> Iterator[Listener]:
    listener = Listener(django_dsn, channel)
    yield listener
    listener.close()


def test_publish_autocommit_is_durable_and_immediate(listener: Listener, channel: str) -> None:
    from sserelay.contrib.django import last_event_id, publish

    assert last_event_id(channel) == 0
    first = publish(channel, {"text": "hi"}, event="greeting")
    second = publish(channel, "plain text")
    assert (first, second) == (1, 2)
    assert listener.next() == {"seq": 1, "event": "greeting", "data": '{"text":"hi"}'}
    assert listener.next() == {"seq": 2, "data": "plain text"}
    assert last_event_id(channel) == 2


def test_publish_in_atomic_goes_out_on_commit(
    django_dsn: str, listener: Listener, channel: str
) -> None:
    from django.db import transaction

    from sserelay.contrib.django import publish

    with transaction.atomic():
        event_id = publish(channel, "in a transaction")
        # Not committed: other sessions see neither the log row nor a notification.
        with psycopg.connect(django_dsn) as other:
            rows = other.execute(
                "SELECT count(*) FROM sserelay.events WHERE channel = %s", (channel,)
            ).fetchone()
        assert rows == (0,)
        assert listener.pending() == []
    assert listener.next() == {"seq": event_id, "data": "in a transaction"}


def test_publish_in_rolled_back_atomic_never_goes_out(listener: Listener, channel: str) -> None:
    from django.db import transaction

    from sserelay.contrib.django import last_event_id, publish

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        publish(channel, "never")
        raise Rollback
    # Notifications arrive in commit order: if "never" had gone out, it would come first.
    publish(channel, "marker")
    assert listener.next() == {"seq": 1, "data": "marker"}
    assert last_event_id(channel) == 1  # the rolled-back id was given to the marker


def test_publish_in_savepoint_rollback(listener: Listener, channel: str) -> None:
    from django.db import transaction

    from sserelay.contrib.django import publish

    with transaction.atomic():
        publish(channel, "kept")
        try:
            with transaction.atomic():
                publish(channel, "dropped")
                raise ValueError
        except ValueError:
            pass
    assert listener.next()["data"] == "kept"
    publish(channel, "after")
    assert listener.next()["data"] == "after"


def test_publish_plain_notify(listener: Listener, channel: str) -> None:
    from sserelay.contrib.django import publish

    assert publish(channel, {"n": 1}, event="tick", durable=False) is None
    assert listener.next() == {"data": {"n": 1}, "event": "tick"}


def test_publish_without_schema(django_dsn: str) -> None:
    from django.conf import settings

    from sserelay import SchemaMissing
    from sserelay.contrib.django import last_event_id, publish

    plain_dsn = psycopg.conninfo.make_conninfo(
        django_dsn, dbname=settings.DATABASES["plain"]["NAME"]
    )
    listener = Listener(plain_dsn, "nolog")
    try:
        assert publish("nolog", "x", using="plain") is None  # auto: plain NOTIFY
        assert listener.next() == {"data": "x"}
        with pytest.raises(SchemaMissing, match=r"manage\.py migrate sserelay"):
            publish("nolog", "x", using="plain", durable=True)
        assert last_event_id("nolog", using="plain") is None
    finally:
        listener.close()


def test_publish_refuses_bad_input(channel: str) -> None:
    from sserelay import InvalidChannel, InvalidEvent
    from sserelay.contrib.django import publish

    with pytest.raises(InvalidChannel):
        publish("", "x")
    with pytest.raises(InvalidEvent):
        publish(channel, "x", event="a\nb")
    with pytest.raises(InvalidEvent):
        publish(channel, {"bad": object()})
    with pytest.raises(InvalidChannel):
        publish("", "x", durable=False)


def test_durable_setting(listener: Listener, channel: str) -> None:
    from django.test import override_settings

    from sserelay.contrib.django import publish

    with override_settings(SSERELAY={"DURABLE": False}):
        assert publish(channel, "plain") is None
    assert listener.next() == {"data": "plain"}


def test_publish_changes_create_update_delete(listener: Listener, channel: str) -> None:
    from chat.models import Message
    from django.db import transaction

    from sserelay.contrib.django import publish_changes

    publisher = publish_changes(Message, channel, serialize=lambda m: {"id": m.pk, "text": m.text})
    try:
        message = Message.objects.create(room="r", user="u", text="one")
        assert listener.next() == {
            "seq": 1,
            "event": "message.created",
            "data": json.dumps({"id": message.pk, "text": "one"}, separators=(",", ":")),
        }
        message.text = "two"
        message.save()
        assert listener.next()["event"] == "message.updated"
        with pytest.raises(RuntimeError), transaction.atomic():
            Message.objects.create(room="r", user="u", text="rolled back")
            raise RuntimeError
        pk = message.pk
        message.delete()
        deleted = listener.next()
        assert deleted["event"] == "message.deleted"
        assert json.loads(deleted["data"]) == {"id": pk, "text": "two"}
        assert deleted["seq"] == 3  # the rolled-back create used no id
    finally:
        publisher.disconnect()
    Message.objects.create(room="r", user="u", text="not published")
    assert listener.pending() == []


def test_publish_changes_default_serialiser_and_options(listener: Listener, channel: str) -> None:
    from chat.models import Message

    from sserelay.contrib.django import publish_changes

    publisher = publish_changes(
        Message, lambda m: channel, event_prefix="msg", operations=["updated"]
    )
    try:
        message = Message.objects.create(room="r", user="u", text="a")  # not published
        message.text = "b"
        message.save()
        event = listener.next()
        assert event["event"] == "msg.updated"
        data = json.loads(event["data"])
        assert data["text"] == "b" and data["id"] == message.pk and data["room"] == "r"
    finally:
        publisher.disconnect()
    with pytest.raises(ValueError, match="operations"):
        publish_changes(Message, channel, operations=["saved"])


def test_chat_app_publishes_messages(django_dsn: str) -> None:
    """The chat example's one-liner (in its AppConfig.ready)."""
    from chat.models import Message

    room = f"room{uuid.uuid4().hex[:8]}"
    listener = Listener(django_dsn, f"chat-{room}")
    try:
        message = Message.objects.create(room=room, user="ann", text="hello")
        event = listener.next()
        assert event["event"] == "message.created"
        assert json.loads(event["data"])["text"] == "hello"
        assert json.loads(event["data"])["id"] == message.pk
    finally:
        listener.close()


def test_migration_is_idempotent(django_dsn: str) -> None:
    from django.db import connection

    from sserelay.bus.postgres import schema
    from sserelay.contrib.django.schema import install_schema

    assert install_schema(connection) == schema.latest_version()
    assert install_schema(connection) == schema.latest_version()
    with psycopg.connect(django_dsn) as conn:
        assert schema.installed_version(conn) == schema.latest_version()


def test_revoke_in_atomic_goes_out_on_commit(django_dsn: str) -> None:
    from django.db import transaction

    from sserelay import ConfigError
    from sserelay.contrib.django import revoke

    subject = f"u{uuid.uuid4().hex[:8]}"
    control = Listener(django_dsn, "sserelay.revoked")
    try:
        with transaction.atomic():
            at = revoke(subject=subject)
            assert control.pending() == []  # not committed: no relay hears of it yet
        message = control.next()
        assert (message["kind"], message["value"]) == ("subject", subject)
        assert abs(message["at"] - at) < 0.001
        with psycopg.connect(django_dsn) as other:
            row = other.execute(
                "SELECT kind FROM sserelay.revocations WHERE value = %s", (subject,)
            ).fetchone()
        assert row == ("subject",)
        with pytest.raises(ConfigError, match="exactly one of subject, jti or channel"):
            revoke()
    finally:
        control.close()
