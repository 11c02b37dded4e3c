"""The ``SSERELAY`` setting: one dict, read when needed (never at import time).

Keys of our own (with their defaults, see :data:`DEFAULTS`), plus any setting of the
relay (:class:`sserelay.config.Settings`) by its name in capitals, e.g. ``HEARTBEAT``
or ``MAX_STREAMS_PER_CLIENT``; those configure the in-process stream view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from ...bus.postgres.admin import dsn_parameters
from ...config import Settings
from ...errors import ConfigError

#: Our own keys and their defaults.
DEFAULTS: dict[str, Any] = {
    # The DATABASES alias publish() writes through and the listener connects to.
    "DATABASE": "default",
    # A separate DSN for the in-process view's listener (bypassing PgBouncer); default:
    # built from DATABASES[DATABASE].
    "LISTEN_DSN": None,
    # Where browsers open streams: None = the in-process view (its URLconf must be
    # included, namespace "sserelay"); else the base URL of `sserelay serve`.
    "STREAM_URL": None,
    # publish(): None = durable if the schema is installed, True = must be, False = never.
    "DURABLE": None,
    # Token signing: an HS256 secret (shared with the relay), or a PEM private key file
    # (RS256/ES256; the relay or the in-process view holds JWT_PUBLIC_KEY).
    "JWT_SECRET": None,
    "JWT_PRIVATE_KEY": None,
    "JWT_PUBLIC_KEY": None,
    # Lifetime of the tokens stream_url() mints, seconds.
    "TOKEN_TTL": 3600,
    # Channel patterns anyone may read (no token needed, none minted for them).
    "PUBLIC_CHANNELS": (),
    # Callable (or dotted path) (user, channel) -> bool: may this user read the channel?
    # None: any channel asked for in a template is allowed.
    "CAN_SUBSCRIBE": None,
    # Change data capture: model label -> options (see capture.py, docs/capture.md).
    "CAPTURE": None,
}

#: Relay settings that make no sense inside Django (the ASGI server owns the socket,
#: and the database comes from DATABASES).
_NOT_RELAY = frozenset(
    {"host", "port", "workers", "dsn", "listen_dsn", "data_dir", "log_level", "jwt_secret"}
    | {"capture", "capture_max_lag"}  # the in-process view runs no capturer
)
#: ``SSERELAY`` keys that configure the in-process view's relay.
RELAY_KEYS = {
    field.name.upper(): field.name
    for field in dataclasses.fields(Settings)
    if field.name not in _NOT_RELAY
}
KNOWN_KEYS = frozenset(DEFAULTS) | frozenset(RELAY_KEYS)


def raw() -> Mapping[str, Any]:
    """The ``SSERELAY`` setting as given ({} if unset)."""
    value = getattr(django_settings, "SSERELAY", None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"settings.SSERELAY must be a dict, not {type(value).__name__}")
    return value


def get(key: str) -> Any:
    """One of our keys, or its default."""
    return raw().get(key, DEFAULTS[key])


def database_alias() -> str:
    alias = get("DATABASE")
    if not isinstance(alias, str):
        raise ConfigError("SSERELAY['DATABASE'] must be the name of a DATABASES entry")
    return alias


def can_subscribe() -> Callable[[Any, str], bool] | None:
    value = get("CAN_SUBSCRIBE")
    if isinstance(value, str):
        value = import_string(value)
    if value is not None and not callable(value):
        raise ConfigError("SSERELAY['CAN_SUBSCRIBE'] must be a callable or its dotted path")
    return value  # type: ignore[no-any-return]  # a user-supplied callable


def database_from_url(url: str, **extra: Any) -> dict[str, Any]:
    """A ``DATABASES`` entry for a PostgreSQL URL or libpq DSN::

        DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}

    ``extra`` keys (``CONN_MAX_AGE``, ``OPTIONS``...) are added to the entry.
    """
    params = dsn_parameters(url)
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
    }
    if params:
        entry["OPTIONS"] = {k: str(v) for k, v in params.items()}
    entry.update(extra)
    return entry


def relay_settings() -> Settings:
    """The :class:`~sserelay.config.Settings` of the in-process view's relay."""
    values: dict[str, Any] = {}
    for key, value in raw().items():
        name = RELAY_KEYS.get(key)
        if name is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        values[name] = value
    values["jwt_secret"] = get("JWT_SECRET")
    public_key = get("JWT_PUBLIC_KEY")
    values["jwt_public_key"] = Path(public_key) if public_key is not None else None
    values["public_channels"] = tuple(get("PUBLIC_CHANNELS"))
    try:
        return Settings(**values)
    except TypeError as exc:
        raise ConfigError(f"SSERELAY: {exc}") from None
