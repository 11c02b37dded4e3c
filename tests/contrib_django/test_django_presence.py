"""presence() through Django's connection: the rows of live leases, summed over relays
(docs/presence.md); a database without the table says so."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from sserelay import InvalidChannel, SchemaMissing

pytestmark = pytest.mark.integration


def test_presence_reads_live_rows_through_django(django_dsn: str) -> None:
    from sserelay.contrib.django import presence

    channel = f"room-{uuid.uuid4().hex[:8]}"
    rows = [
        ("r1", "ada", 2, "1 minute"),
        ("r2", "ada", 1, "1 minute"),
        ("r2", "", 3, "1 minute"),
        ("r3", "gone", 1, "-1 minute"),  # a dead relay's row: its lease has passed
    ]
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        for relay, subject, count, lease in rows:
            conn.execute(
                "INSERT INTO sserelay.presence VALUES (%s, %s, %s, %s, now() + %s::interval)",
                (relay, channel, subject, count, lease),
            )
    assert presence(channel) == {
        "channel": channel,
        "subjects": ["ada"],
        "anonymous": 3,
        "connections": 6,
    }
    with pytest.raises(InvalidChannel):
        presence("")


def test_presence_without_the_schema(django_dsn: str) -> None:
    from sserelay.contrib.django import presence

    with pytest.raises(SchemaMissing):
        presence("room-1", using="plain")
