"""The exceptions sserelay raises. Everything derives from :class:`SseRelayError`."""

from __future__ import annotations


class SseRelayError(Exception):
    """Base class of every error raised by sserelay."""


class ConfigError(SseRelayError, ValueError):
    """A setting is missing or has a value that cannot work."""


class InvalidChannel(SseRelayError, ValueError):
    """A channel name that PostgreSQL (or sserelay) cannot accept."""


class InvalidEvent(SseRelayError, ValueError):
    """An event field (``event``, ``id``, ``retry``) that cannot go on the SSE wire."""


class PayloadTooLarge(SseRelayError, ValueError):
    """A notification payload over PostgreSQL's NOTIFY limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload is {size} bytes; PostgreSQL NOTIFY accepts at most {limit} bytes"
        )


class PublishError(SseRelayError):
    """The database refused or failed to publish an event."""


class SchemaMissing(SseRelayError):
    """The ``sserelay`` schema (durable channels) is not installed in the database."""

    def __init__(self, detail: str = "") -> None:
        message = "the sserelay schema is not installed in this database: run `sserelay migrate`"
        super().__init__(f"{message} ({detail})" if detail else message)


class BrokerUnavailable(SseRelayError):
    """The broker (PostgreSQL) cannot be reached right now."""


class AuthError(SseRelayError):
    """A request the channel policy refuses: ``status`` is 401 (no valid token: missing,
    malformed, expired, badly signed...) or 403 (a valid token that does not cover the
    channel), ``reason`` a one-line explanation safe to send to the client (it never
    contains the token). On a 403, ``subject`` is the verified token's ``sub`` (for logs)."""

    def __init__(self, status: int, reason: str, *, subject: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.subject = subject
