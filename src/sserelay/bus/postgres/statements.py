"""Every SQL statement sserelay sends to PostgreSQL outside its migrations, in one place.

Values always go as parameters; identifiers (channel names in LISTEN) go through
``psycopg.sql.Identifier`` in :mod:`~sserelay.bus.postgres.listener`.
"""

from __future__ import annotations

import hashlib

#: The signature whose presence means "durable publishing is available".
PUBLISH_FUNCTION = "sserelay.publish(text,text,text)"
#: Present from schema version 3: durable events are notified on a name of their own.
NOTIFY_FUNCTION = "sserelay.notify_channel(text)"

NOTIFY = "SELECT pg_notify(%s, %s)"
PUBLISH = "SELECT sserelay.publish(%s::text, %s::text, %s::text)"
AVAILABLE = "SELECT to_regprocedure(%s) IS NOT NULL"
PRUNE = "SELECT sserelay.prune(%s::interval, %s::integer)"
READ_AFTER = (
    "SELECT id, event, data, created_at FROM sserelay.events"
    " WHERE channel = %s AND id > %s ORDER BY id LIMIT %s"
)
READ_LAST = (
    "SELECT id, event, data, created_at FROM ("
    "SELECT id, event, data, created_at FROM sserelay.events"
    " WHERE channel = %s ORDER BY id DESC LIMIT %s) AS newest ORDER BY id"
)
OLDEST_ID = "SELECT min(id) FROM sserelay.events WHERE channel = %s"
LAST_ID = "SELECT last_id FROM sserelay.channels WHERE channel = %s"
#: The last id of each of several channels, in one query (channels never published to
#: have no row: their head is 0).
LAST_IDS = "SELECT channel, last_id FROM sserelay.channels WHERE channel = ANY(%s::text[])"

#: The prefix of the channel sserelay.publish notifies (schema version 3, see
#: ``sql/0003_durable_notify_channel.sql``); the ``sserelay.`` namespace is reserved.
DURABLE_PREFIX = "sserelay.d."


def durable_channel(channel: str) -> str:
    """The PostgreSQL channel ``sserelay.publish`` notifies for ``channel``'s events, as
    ``sserelay.notify_channel`` computes it."""
    return DURABLE_PREFIX + hashlib.md5(channel.encode("utf-8"), usedforsecurity=False).hexdigest()


#: Presence (``sql/*_presence.sql``): one relay's flush, a channel's subjects, the prune.
PRESENCE_WRITE = (
    "SELECT out_channel, out_kind, out_subject FROM sserelay.presence_write("
    "%s::text, %s::interval, %s::text[], %s::text[], %s::integer[], %s::boolean)"
)
PRESENCE_READ = "SELECT subject, connections FROM sserelay.presence_of(%s::text)"
PRESENCE_PRUNE = (
    "SELECT out_channel, out_kind, out_subject FROM sserelay.presence_prune(%s::boolean)"
)
PRESENCE_REMOVE = "DELETE FROM sserelay.presence WHERE relay = %s"
