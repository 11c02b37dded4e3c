"""The errors of capture, and the boundary where driver errors become them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from ....errors import BrokerUnavailable, SseRelayError


class CaptureError(SseRelayError):
    """Base class of capture's own errors."""


class DatabaseRefused(CaptureError):
    """The database answered a capture statement with an error (a permission, a missing
    object...): the message is the server's."""


class Conflict(CaptureError):
    """``capture_state`` moved under this capturer: another one wrote. Start over."""


class NotInstalled(CaptureError):
    """The database has no capture installed (``sserelay capture add`` makes it)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Driver errors inside become :class:`BrokerUnavailable` (the connection or the server
    went away) or :class:`DatabaseRefused` (the server said no), ``what`` saying doing what."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise BrokerUnavailable(f"capture: {what}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise DatabaseRefused(f"capture: {what}: {_first_line(exc)}") from exc
