"""psycopg's errors, translated where they enter: nothing above the bus sees a driver error.

Each translation keeps the driver's error as the cause (``raise ... from``) for the log,
and says in its message what was being done; a driver's message never reaches an HTTP
client (the fronts answer with their own one-line reasons).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg_pool import PoolTimeout

from ...errors import BrokerUnavailable, PublishError, SchemaMissing, SseRelayError

#: SQLSTATEs meaning the schema, a table or the function is missing.
MISSING = frozenset({"3F000", "42P01", "42883"})

#: What the bus raises when the database is unreachable or failed.
DRIVER_ERRORS = (psycopg.Error, PoolTimeout, OSError)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, or of one wrapped by a framework (Django's
    ``DatabaseError`` keeps it as ``__cause__``)."""
    for candidate in (exc, exc.__cause__):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def translate(
    exc: BaseException,
    what: str,
    *,
    reading: bool = False,
    where: str = "this database",
    hint: str = "`sserelay migrate`",
) -> SseRelayError:
    """The package's error for a driver error met while doing ``what``."""
    if sqlstate(exc) in MISSING:
        return SchemaMissing(first_line(exc), where=where, hint=hint)
    if reading or isinstance(exc, PoolTimeout | OSError):
        return BrokerUnavailable(f"{what} failed: {first_line(exc)}")
    return PublishError(f"{what} failed: {exc}")


@contextlib.contextmanager
def translated(what: str, *, reading: bool = False) -> Iterator[None]:
    """Run the block; a driver error leaves it translated (see :func:`translate`)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(exc, what, reading=reading) from exc
