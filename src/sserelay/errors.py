"""The exceptions sserelay raises. Everything derives from :class:`SseRelayError`.

::

    SseRelayError
    ├── ConfigError             a setting is missing or cannot work
    ├── InvalidChannel          a channel name the bus cannot take
    ├── InvalidEvent            an event field that cannot go on the SSE wire
    ├── PayloadTooLarge         over the bus's limit (PostgreSQL NOTIFY, Redis)
    ├── PublishError            the bus refused or failed to publish
    │   └── SchemaMissing       the durable log is not installed (``sserelay migrate``)
    ├── BrokerUnavailable       the bus cannot be reached right now
    └── HttpError               a request answered with a status and a one-line reason
        └── AuthError           401 (no valid token) or 403 (the token does not cover it)

Driver errors (psycopg, redis) never leave the bus: they are translated where they
enter (``raise ... from`` keeps the cause for the log).
"""

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
    """A payload over the limit of the bus in use (``bus`` names it: ``PostgreSQL NOTIFY``,
    ``Redis PUBLISH``)."""

    def __init__(self, size: int, limit: int, bus: str = "PostgreSQL NOTIFY") -> None:
        self.size = size
        self.limit = limit
        self.bus = bus
        super().__init__(f"payload is {size} bytes; {bus} accepts at most {limit} bytes")


class PublishError(SseRelayError):
    """The bus refused or failed to publish an event."""


class SchemaMissing(PublishError):
    """The ``sserelay`` schema (durable channels) is not installed in the database."""

    def __init__(
        self, detail: str = "", *, where: str = "this database", hint: str = "`sserelay migrate`"
    ) -> None:
        message = f"the sserelay schema is not installed in {where}: run {hint}"
        super().__init__(f"{message} ({detail})" if detail else message)


class BrokerUnavailable(SseRelayError):
    """The bus (PostgreSQL or Redis) cannot be reached right now."""


class HttpError(SseRelayError):
    """A request answered with ``status`` and a one-line ``reason`` (safe to show the
    client: it never holds a token or a driver's message), plus response ``headers``."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class AuthError(HttpError):
    """A request the channel policy refuses: ``status`` is 401 (no valid token: missing,
    malformed, expired, badly signed...) or 403 (a valid token that does not cover the
    channel), ``reason`` a one-line explanation safe to send to the client (it never
    contains the token). On a 403, ``subject`` is the verified token's ``sub`` (for logs)."""

    def __init__(self, status: int, reason: str, *, subject: str | None = None) -> None:
        super().__init__(status, reason)
        self.subject = subject
