"""The errors of capture, and the boundary where driver errors become them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from ....errors import BrokerUnavailable, SseRelayError
from ..errors import first_line


class CaptureError(SseRelayError):
    """Base class of capture's own errors."""


class DatabaseRefused(CaptureError):
    """The database answered a capture statement with an error (a permission, a missing
    object...): the message is the server's."""


class Conflict(CaptureError):
    """``capture_state`` moved under this capturer: another one wrote. Start over."""


class NotInstalled(CaptureError):
    """The database has no capture installed (``sserelay capture add`` makes it)."""


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Driver errors inside become :class:`BrokerUnavailable` (the connection or the server
    went away) or :class:`DatabaseRefused` (the server said no), ``what`` saying doing what."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise BrokerUnavailable(f"capture: {what}: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise DatabaseRefused(f"capture: {what}: {first_line(exc)}") from exc
