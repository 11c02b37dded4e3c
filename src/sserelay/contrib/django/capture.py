"""Change data capture from Django settings: ``SSERELAY["CAPTURE"]``.

::

    SSERELAY = {
        "CAPTURE": {
            "chat.Message": {
                "channel": "room-{room_id}",      # a channel, or a template of field names
                "fields": ["id", "room", "text"],  # optional: only these (default: all)
                "events": ["insert"],              # optional: insert, update, delete, truncate
                "where": "text <> ''",             # optional: SQL on the table's columns
                "event_prefix": "message",         # optional: default the table's name
            },
        },
    }

Models are named by their label (``app_label.ModelName``); fields by name (``room``,
``room_id`` for a foreign key, ``pk`` for the primary key), which become their columns.
``manage.py check`` checks all of it without a database (``sserelay.E010``);
``manage.py sserelay_capture`` installs it (:func:`apply`), and
``manage.py sserelay_capture --run`` runs a capturer. The database is reached through
:mod:`sserelay.bus.postgres.capture.commands` (no driver here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist

from ...bus.postgres.capture import commands
from ...bus.postgres.capture.rules import DEFAULT_EVENTS, Rule, check_event_prefix, check_events
from ...bus.postgres.capture.tables import quote_ident
from ...bus.postgres.capture.template import Template
from ...errors import ConfigError
from . import conf

KEYS = frozenset({"channel", "fields", "events", "where", "event_prefix"})


@dataclass(frozen=True, slots=True)
class ModelCapture:
    """One model's capture, in the database's terms (table and column names)."""

    label: str
    table: str
    channel: str
    columns: tuple[str, ...] | None
    events: frozenset[str]
    where: str | None
    event_prefix: str | None

    def spec(self) -> commands.RuleSpec:
        """The rule to install."""
        return commands.RuleSpec(
            table=self.table,
            channel=self.channel,
            columns=self.columns,
            where=self.where,
            events=self.events,
            event_prefix=self.event_prefix,
        )


def _column(model: Any, name: str, label: str) -> str:
    try:
        field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    except FieldDoesNotExist:
        raise ConfigError(
            f"SSERELAY['CAPTURE'][{label!r}]: {label} has no field {name!r}"
        ) from None
    column = getattr(field, "column", None)
    if not column:
        raise ConfigError(f"SSERELAY['CAPTURE'][{label!r}]: field {name!r} has no column")
    return str(column)


def _spec(label: str, entry: Any) -> ModelCapture:
    where = f"SSERELAY['CAPTURE'][{label!r}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a dict with at least a 'channel'")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known: {sorted(KEYS)}")
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise ConfigError(f"{where}: no model {label!r} (app_label.ModelName)") from None
    if "channel" not in entry:
        raise ConfigError(f"{where} needs a 'channel'")
    template = Template.parse(entry["channel"])
    columns = {f: _column(model, f, label) for f in template.fields}
    fields = entry.get("fields")
    if fields is not None and (isinstance(fields, str) or not fields):
        raise ConfigError(f"{where}['fields'] must be a non-empty list of field names")
    prefix = entry.get("event_prefix")
    row_filter = entry.get("where")
    if row_filter is not None and not isinstance(row_filter, str):
        raise ConfigError(f"{where}['where'] must be an SQL expression (a string)")
    return ModelCapture(
        label=label,
        table=quote_ident(model._meta.db_table),
        channel=template.rename(columns).text,
        columns=None if fields is None else tuple(_column(model, f, label) for f in fields),
        events=check_events(entry.get("events", DEFAULT_EVENTS)),
        where=row_filter,
        event_prefix=None if prefix is None else check_event_prefix(prefix),
    )


def configured() -> list[ModelCapture]:
    """``SSERELAY["CAPTURE"]`` checked and resolved to tables and columns."""
    value = conf.get("CAPTURE")
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigError("SSERELAY['CAPTURE'] must be a dict of model label -> options")
    return [_spec(label, entry) for label, entry in value.items()]


def check_capture(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``sserelay.E010``: ``SSERELAY["CAPTURE"]`` names a model, field or option wrongly."""
    if not isinstance(getattr(django_settings, "SSERELAY", None), Mapping | None):
        return []  # sserelay.E001 says so
    try:
        configured()
    except ConfigError as exc:
        return [
            checks.Error(
                str(exc),
                hint="see the README's 'Change data capture' section (docs/capture.md, Django)",
                id="sserelay.E010",
            )
        ]
    return []


def apply(dsn: str, *, remove_others: bool = False) -> tuple[list[Rule], list[str]]:
    """Install capture and a rule per configured model in ``dsn``'s database; with
    ``remove_others``, drop rules of tables not configured. Returns the rules installed
    and the tables no longer captured."""
    specs = [model.spec() for model in configured()]
    return commands.apply(
        dsn, specs, remove_others=remove_others, application_name="sserelay-django"
    )
