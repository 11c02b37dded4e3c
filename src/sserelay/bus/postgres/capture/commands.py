"""What an operator does to capture, given a DSN: install, add, remove, list, status,
reset the slot, uninstall; and apply a whole set of rules at once (Django's
``SSERELAY["CAPTURE"]``).

This is the door for the layers above the bus (``sserelay capture``, Django's
``manage.py sserelay_capture`` and check): each function opens its own autocommit
connection, and a driver error leaves it as the package's (:class:`BrokerUnavailable`
when the server cannot be reached, :class:`~.errors.DatabaseRefused` when it says no,
:class:`ConfigError` for what :mod:`.rules` and :mod:`.slot` refuse), never as psycopg's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ....errors import BrokerUnavailable, ConfigError
from . import rules as rules_
from . import slot as slot_
from .errors import translated
from .rules import DEFAULT_EVENTS, Rule
from .status import SlotStatus, read_status


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as asked for: the arguments of :func:`add`."""

    table: str
    channel: str
    columns: tuple[str, ...] | None = None
    where: str | None = None
    events: Iterable[str] = DEFAULT_EVENTS
    event_prefix: str | None = None


@contextlib.contextmanager
def connected(dsn: str, what: str, *, application_name: str) -> Iterator[Any]:
    """An autocommit connection to ``dsn``, for doing ``what``; driver errors translated."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name=application_name)
    except psycopg.Error as exc:
        raise BrokerUnavailable(f"cannot connect to the database: {exc}") from exc
    with translated(what), conn:
        yield conn


def _installed(conn: psycopg.Connection[Any]) -> str:
    name = slot_.configured_slot(conn)
    if name is None:
        raise ConfigError("capture is not installed in this database")
    return name


def install(dsn: str, *, slot: str | None = None, application_name: str = "sserelay-cli") -> str:
    """Install capture (schema, publications, slot); idempotent. Returns the slot."""
    with connected(dsn, "installing capture", application_name=application_name) as conn:
        return slot_.install(conn, slot=slot)


def add(
    dsn: str,
    spec: RuleSpec,
    *,
    slot: str | None = None,
    application_name: str = "sserelay-cli",
) -> tuple[str, Rule]:
    """Install capture if need be, then capture ``spec.table`` (replacing its rule).
    Returns the slot and the rule."""
    with connected(dsn, f"capturing {spec.table}", application_name=application_name) as conn:
        name = slot_.install(conn, slot=slot)
        return name, _add(conn, spec)


def _add(conn: psycopg.Connection[Any], spec: RuleSpec) -> Rule:
    return rules_.add(
        conn,
        spec.table,
        spec.channel,
        columns=spec.columns,
        row_filter=spec.where,
        events=spec.events,
        event_prefix=spec.event_prefix,
    )


def apply(
    dsn: str,
    specs: Sequence[RuleSpec],
    *,
    remove_others: bool = False,
    application_name: str = "sserelay-cli",
) -> tuple[list[Rule], list[str]]:
    """Install capture and a rule per spec; with ``remove_others``, stop capturing the
    tables no spec names. Returns the rules installed and the tables no longer captured."""
    with connected(dsn, "installing capture rules", application_name=application_name) as conn:
        slot_.install(conn)
        installed = [_add(conn, spec) for spec in specs]
        removed: list[str] = []
        if remove_others:
            keep = {rule.relid for rule in installed}
            for rule in rules_.load_rules(conn):
                if rule.relid not in keep and rules_.remove(conn, rule.relid):
                    removed.append(rule.name)
    return installed, removed


def remove(dsn: str, table: str, *, application_name: str = "sserelay-cli") -> bool:
    """Stop capturing ``table``; False if it was not captured."""
    with connected(dsn, f"removing {table}", application_name=application_name) as conn:
        _installed(conn)
        return rules_.remove(conn, table)


def list_rules(dsn: str, *, application_name: str = "sserelay-cli") -> list[Rule]:
    """Every rule, by table name."""
    with connected(dsn, "reading the capture rules", application_name=application_name) as conn:
        _installed(conn)
        return rules_.load_rules(conn)


def status(dsn: str, *, application_name: str = "sserelay-cli") -> SlotStatus:
    """The capture's status as the database sees it (:mod:`.status`)."""
    with connected(dsn, "reading the capture status", application_name=application_name) as conn:
        found = read_status(conn)
    if found is None:
        raise ConfigError("capture is not installed in this database")
    return found


def reset_slot(dsn: str, *, application_name: str = "sserelay-cli") -> tuple[str, list[str]]:
    """Replace the slot and send ``missed`` on the captured channels (:func:`.slot.reset_slot`)."""
    with connected(dsn, "resetting the slot", application_name=application_name) as conn:
        return slot_.reset_slot(conn)


def uninstall(dsn: str, *, application_name: str = "sserelay-cli") -> str | None:
    """Drop the slot and the publications, forget the rules; the slot dropped, if any."""
    with connected(dsn, "uninstalling capture", application_name=application_name) as conn:
        return slot_.uninstall(conn)
