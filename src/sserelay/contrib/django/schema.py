"""The durable schema through a Django connection (the app's migration uses these)."""

from __future__ import annotations

from typing import Any

from ...bus.postgres import schema
from ...bus.postgres.admin import is_psycopg_connection
from ...errors import ConfigError
from .publish import forget


def _raw(connection: Any) -> Any:
    if connection.vendor != "postgresql":
        raise ConfigError(f"sserelay needs PostgreSQL, not {connection.vendor}")
    connection.ensure_connection()
    raw = connection.connection
    if not is_psycopg_connection(raw):
        raise ConfigError("sserelay needs Django to use psycopg 3 (pip install 'psycopg[binary]')")
    return raw


def install_schema(connection: Any) -> int:
    """Install or upgrade the ``sserelay`` schema; returns the version reached."""
    raw = _raw(connection)
    version = schema.migrate(raw)
    forget(raw)
    return version


def uninstall_schema(connection: Any) -> None:
    """Drop the ``sserelay`` schema (the log and every trigger installed with it)."""
    raw = _raw(connection)
    schema.uninstall(raw)
    forget(raw)


def install(apps: Any, schema_editor: Any) -> None:
    """A migration's step: :func:`install_schema` on the migration's connection."""
    install_schema(schema_editor.connection)


def uninstall(apps: Any, schema_editor: Any) -> None:
    """A migration's reverse step: :func:`uninstall_schema`."""
    uninstall_schema(schema_editor.connection)
