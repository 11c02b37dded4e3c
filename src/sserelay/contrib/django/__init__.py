"""sserelay for Django: ``INSTALLED_APPS += ["sserelay.contrib.django"]``.

- :func:`publish` sends an event through Django's own database connection, so it is
  part of the current transaction (sent on commit, never on rollback).
- :func:`presence` reads who is on a presence channel (docs/presence.md).
- :func:`publish_changes` publishes a model's creates, updates and deletes.
- :func:`revoke` revokes tokens (by subject or jti) or channels on every relay, in the
  current transaction.
- :func:`stream_url` and the ``{% sserelay_stream_url %}`` tag give the page the URL
  of a stream, with a token for the current user when tokens are configured.
- :mod:`sserelay.contrib.django.views` streams from Django itself under ASGI: every
  stream of a process shares one PostgreSQL listener.

Settings live in one ``SSERELAY`` dict (see :mod:`sserelay.contrib.django.conf` and
``docs/django.md``). Importing this module touches neither settings nor the database.
"""

from __future__ import annotations

from .presence import presence
from .publish import last_event_id, publish, revoke
from .signals import ModelPublisher, publish_changes
from .tokens import stream_url, token_for

__all__ = [
    "ModelPublisher",
    "last_event_id",
    "presence",
    "publish",
    "publish_changes",
    "revoke",
    "stream_url",
    "token_for",
]
